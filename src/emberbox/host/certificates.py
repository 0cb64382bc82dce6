"""Certificates this host makes with ``cryptography``: PEM helpers, and the node's egress CA.

The egress CA signs, on demand, a certificate for each name the egress gateway intercepts
(a domain with header rules); only sandboxes with such rules trust it. Its key never leaves
the node's data dir (mode 0600); it cannot be name-constrained, since rules name any domain.
"""

from __future__ import annotations

import collections
import datetime
import os
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import write_atomic

CA_DAYS = 3650
LEAF_DAYS = 30  # leaves are remade at every node start, and when they near their end
MAX_CONTEXTS = 1024  # leaves kept, least recently used dropped first


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class EgressCa:
    """Made in ``directory`` at first use, loaded afterwards."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
        self._contexts: collections.OrderedDict[str, tuple[datetime.datetime, ssl.SSLContext]]
        self._contexts = collections.OrderedDict()
        self._lock = threading.Lock()

    def pem(self) -> bytes:
        return self._load()[0].public_bytes(serialization.Encoding.PEM)

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        with self._lock:
            if self._ca is None:
                self._ca = self._read() or self._make()
            return self._ca

    def _read(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
        """The CA on disk; None when there is none (or it nears its end). Files that exist
        but do not load are an error, never silently replaced: sandboxes trust that CA. A key
        without its certificate is a make cut off (the certificate is written last, and no
        sandbox was given it): made again."""
        cert_path, key_path = self.directory / "ca.pem", self.directory / "ca-key.pem"
        if not cert_path.exists():
            return None
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise OSError(f"the egress CA in {self.directory} does not load: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise OSError(f"the egress CA key in {self.directory} is not an EC key")
        if cert.not_valid_after_utc < now() + datetime.timedelta(days=LEAF_DAYS):
            return None
        return cert, key

    def _make(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Emberbox egress gateway CA")])
        start = now() - datetime.timedelta(hours=1)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_atomic(self.directory / "ca-key.pem", key_pem(key), private=True)
        write_atomic(self.directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
        return cert, key

    def server_context(self, name: str) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for ``name`` (HTTP/1.1 only: the
        gateway rewrites requests with an HTTP/1 parser). Signing costs a few milliseconds:
        call it off the event loop. The leaf's key lives only in memory (the file ssl needs
        to load it is removed at once)."""
        with self._lock:
            cached = self._contexts.get(name)
            if cached is not None and cached[0] > now():
                self._contexts.move_to_end(name)
                return cached[1]
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        start = now() - datetime.timedelta(hours=1)
        end = start + datetime.timedelta(days=LEAF_DAYS)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".pem") as chain:
            chain.write(key_pem(key) + leaf.public_bytes(serialization.Encoding.PEM))
            chain.flush()
            context.load_cert_chain(chain.name)
        context.set_alpn_protocols(["http/1.1"])
        with self._lock:
            self._contexts[name] = (end - datetime.timedelta(days=1), context)
            while len(self._contexts) > MAX_CONTEXTS:
                self._contexts.popitem(last=False)
        return context
