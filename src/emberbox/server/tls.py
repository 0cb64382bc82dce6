"""Inbound TLS for the API and the sandbox proxy.

With TLS on, clients reach a sandbox's port at ``https://<port>-<id>.<domain>`` and need no
routing headers, so the SDKs' signed file URLs work from any plain client (browser, ``curl``).
The certificate comes from one of two places:

* files the operator provides (``EMBERBOX_TLS_CERT`` + ``EMBERBOX_TLS_KEY``): a certificate
  for ``*.<domain>``, from their own CA or a public one;
* ``EMBERBOX_TLS=local``: a CA generated once in ``<data_dir>/tls`` issues a certificate for the
  domain, ``*.<domain>`` and this machine's loopback names. Clients trust it through
  ``ca.pem`` (``curl --cacert``, ``NODE_EXTRA_CA_CERTS``) or ``bundle.pem`` (the system's roots
  plus ours, for ``SSL_CERT_FILE``, which replaces the system roots). The CA's name constraints
  limit it to exactly those names, so trusting it cannot let its key impersonate anything else.

The key material is made with ``cryptography``; the TLS itself is uvicorn's (Python's ``ssl``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..host.certificates import key_pem
from ..host.certificates import now as utc_now
from ..host.files import write_atomic
from .config import Settings

CA_DAYS = 3650
LEAF_DAYS = 397  # what public CAs may issue; renewed at start when fewer than RENEW_DAYS remain
RENEW_DAYS = 30
SYSTEM_ROOTS = Path("/etc/ssl/certs/ca-certificates.crt")


class TlsError(Exception):
    """The TLS settings cannot work; the message says what to change."""


@dataclass(frozen=True)
class ServerTls:
    """What the listeners serve, and what clients trust (only for the local CA)."""

    cert: Path
    key: Path
    ca: Path | None = None
    bundle: Path | None = None


def check(settings: Settings) -> None:
    """Refuse settings that cannot work, writing nothing (before the server takes its lock)."""
    tls = settings.tls
    if not tls.enabled:
        return
    if tls.mode not in ("", "local"):
        raise TlsError(f"EMBERBOX_TLS={tls.mode!r}: use 'local', or leave it empty")
    if tls.local and (tls.cert or tls.key):
        raise TlsError("EMBERBOX_TLS=local makes its own certificate: unset EMBERBOX_TLS_CERT/KEY")
    if not tls.local and not (tls.cert and tls.key):
        raise TlsError("EMBERBOX_TLS_CERT and EMBERBOX_TLS_KEY go together: set both")
    if not settings.domain:
        raise TlsError(
            "TLS serves https://<port>-<sandboxId>.<domain>: set EMBERBOX_DOMAIN "
            "(with ':<port>' when the proxy does not listen on 443)"
        )
    if not tls.local and not _pair_loads(Path(tls.cert), Path(tls.key)):
        raise TlsError(
            f"cannot use EMBERBOX_TLS_CERT={tls.cert} with EMBERBOX_TLS_KEY={tls.key}: "
            "not a readable PEM certificate and its private key"
        )


def prepare(settings: Settings) -> ServerTls | None:
    """The certificate the listeners serve, made or checked now, or None when TLS is off.
    The server calls it holding the data dir's lock, so only one server writes the files."""
    check(settings)
    tls = settings.tls
    if not tls.enabled:
        return None
    if tls.local:
        return _local(settings.data_dir / "tls", _names(settings))
    return ServerTls(cert=Path(tls.cert), key=Path(tls.key))


def _pair_loads(cert: Path, key: Path) -> bool:
    """Whether ``cert`` and ``key`` are a certificate and its key, as the listeners load them."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError):
        return False
    return True


@dataclass(frozen=True)
class _Names:
    dns: tuple[str, ...]
    ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]


def _names(settings: Settings) -> _Names:
    """The names the local certificate covers: the domain, its subdomains, and loopback."""
    assert settings.domain
    domain = settings.sandbox_host
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    try:
        bound = ipaddress.ip_address(settings.host)
    except ValueError:
        bound = None
    if bound is not None and not bound.is_unspecified and bound not in ips:
        ips.append(bound)
    return _Names(dns=(domain, f"*.{domain}", "localhost"), ips=tuple(ips))


def _local(directory: Path, names: _Names) -> ServerTls:
    """Public files (``ca.pem``, ``bundle.pem``, ``server.pem``) readable by everyone, since
    users point their clients at them; the keys in ``private/``, readable by us only."""
    private = directory / "private"
    private.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    os.chmod(private, 0o700)
    files = ServerTls(
        cert=directory / "server.pem",
        key=private / "server-key.pem",
        ca=directory / "ca.pem",
        bundle=directory / "bundle.pem",
    )
    assert files.ca and files.bundle
    ca_key_path = private / "ca-key.pem"
    ca = _load_ca(files.ca, ca_key_path, names)
    if ca is None:
        ca = _new_ca(names)
        write_atomic(ca_key_path, key_pem(ca[1]), private=True)
        write_atomic(files.ca, ca[0].public_bytes(serialization.Encoding.PEM))
    if not (_leaf_ok(files.cert, ca[0], names) and _pair_loads(files.cert, files.key)):
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        write_atomic(files.key, key_pem(leaf_key), private=True)
        leaf = _new_leaf(leaf_key, ca, names)
        write_atomic(files.cert, leaf.public_bytes(serialization.Encoding.PEM))
    roots = SYSTEM_ROOTS.read_bytes() if SYSTEM_ROOTS.exists() else b""
    write_atomic(files.bundle, roots.rstrip(b"\n") + b"\n" + files.ca.read_bytes())
    return files


def _constraints(names: _Names) -> x509.NameConstraints:
    permitted: list[x509.GeneralName] = [
        x509.DNSName(n) for n in names.dns if not n.startswith("*.")
    ]
    permitted += [
        x509.IPAddress(ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")) for ip in names.ips
    ]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def _load_ca(
    cert_path: Path, key_path: Path, names: _Names
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The existing CA, if it is whole, valid long enough and permitted to name ``names``
    (a new domain needs a new CA: clients must then trust the new ``ca.pem``)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.not_valid_after_utc < utc_now() + datetime.timedelta(days=LEAF_DAYS):
        return None
    if constraints != _constraints(names):
        return None
    return cert, key


def _new_ca(names: _Names) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Emberbox"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"Emberbox local CA ({socket.gethostname()[:32]})"
            ),
        ]
    )
    now = utc_now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_constraints(names), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf_ok(path: Path, ca: x509.Certificate, names: _Names) -> bool:
    try:
        leaf = x509.load_pem_x509_certificate(path.read_bytes())
        leaf.verify_directly_issued_by(ca)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    wanted = set(_san(names))
    return set(san) == wanted and leaf.not_valid_after_utc > utc_now() + datetime.timedelta(
        days=RENEW_DAYS
    )


def _san(names: _Names) -> list[x509.GeneralName]:
    return [x509.DNSName(n) for n in names.dns] + [x509.IPAddress(ip) for ip in names.ips]


def _new_leaf(
    key: ec.EllipticCurvePrivateKey,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    names: _Names,
) -> x509.Certificate:
    ca_cert, ca_key = ca
    now = utc_now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names.dns[1])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
