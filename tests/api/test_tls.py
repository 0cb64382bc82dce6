"""Inbound TLS: the API and the sandbox proxy over HTTPS, with a local CA or the operator's own
certificate; sandboxes reached by name (``https://<port>-<id>.<domain>``), so the SDKs' signed
file URLs work from plain ``curl``.

Names under the test domain resolve only through a resolver the test runs on loopback
(``dnslib``), given to the user's processes by a private mount namespace's ``/etc/resolv.conf``;
nothing here sends a packet off this host.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSServer

from emberbox.host.ports import free_loopback_port
from emberbox.server import tls
from emberbox.server.config import Settings, TlsSettings
from emberbox.server.testing import ServerProcess
from tests.api.npm import NODE_MODULES, needs_node
from tests.pki import ca_and_certificate
from tests.runtimes.gvisor_support import gvisor_server

DOMAIN = "sandbox.test"
RESOLVER = "127.0.0.153"  # a loopback address of its own: port 53 there is ours


class WildcardResolver(BaseResolver):  # type: ignore[misc]
    """``<domain>`` and every name under it are 127.0.0.1; any other name does not exist."""

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = request.q.qname
        name = str(qname).rstrip(".").lower()
        if name != DOMAIN and not name.endswith("." + DOMAIN):
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            reply.add_answer(RR(qname, QTYPE.A, rdata=A("127.0.0.1"), ttl=5))
        return reply


@pytest.fixture(scope="module")
def resolver() -> Iterator[str]:
    servers = [DNSServer(WildcardResolver(), address=RESOLVER, port=53, tcp=t) for t in (0, 1)]
    for s in servers:
        s.start_thread()
    try:
        yield RESOLVER
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proxy_port = free_loopback_port()
    env = {
        "EMBERBOX_TLS": "local",
        "EMBERBOX_PROXY_PORT": str(proxy_port),
        "EMBERBOX_DOMAIN": f"{DOMAIN}:{proxy_port}",
    }
    with gvisor_server(tmp_path_factory.mktemp("tls-server"), env) as s:
        yield s


def as_user(argv: list[str], server: ServerProcess, resolver: str, tmp: Path) -> dict[str, object]:
    """Run ``argv`` as a user of ``server`` would, with only the banner's variables, and with
    ``resolver`` as its DNS (a private mount namespace's /etc/resolv.conf: unshare makes its
    mounts private, so the host's file is untouched); its last line of output, parsed."""
    assert server.first_key is not None
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {resolver}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env |= server.sdk_env(server.first_key)
    assert "E2B_SANDBOX_URL" not in env  # by name, not by routing headers
    bind = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", bind, str(resolv), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_a_user_reaches_sandboxes_by_name_over_https(
    server: ServerProcess, resolver: str, tmp_path: Path
) -> None:
    script = Path(__file__).with_name("tls_user.py")
    out: dict[str, Any] = as_user([sys.executable, str(script)], server, resolver, tmp_path)

    domain = server.extra_env["EMBERBOX_DOMAIN"]
    envd_url = out["envd_url"]
    assert envd_url.startswith("https://49983-") and envd_url.endswith(f".{domain}")
    assert out["echo"] == "over-tls\n"
    assert out["host"].startswith("8080-") and out["host"].endswith(f".{domain}")
    assert out["page"] == ["from the sdk", 200, "HTTP/1.1"]
    assert out["download"] == ["from the sdk", "200"]
    assert out["upload"][1] == "200", out["upload"]
    assert out["uploaded"] == "uploaded with curl"
    assert out["expired"][1] == "401" and "expired" in out["expired"][0]
    assert out["unsigned"][1] == "401", out["unsigned"]
    assert out["ours"] == "ours\n" and out["ours_host"] == out["host"]
    assert out["by_domain"] == [f"https://api.{domain}", "by-domain\n"]


@needs_node
def test_the_npm_sdk_reaches_sandboxes_by_name_over_https(
    server: ServerProcess, resolver: str, tmp_path: Path
) -> None:
    shutil.copy(Path(__file__).with_name("js") / "tls.mjs", tmp_path / "tls.mjs")
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    out: dict[str, Any] = as_user(["node", "tls.mjs"], server, resolver, tmp_path)
    domain = server.extra_env["EMBERBOX_DOMAIN"]
    assert out["echo"] == "from-js\n"
    assert out["host"].startswith("8081-") and out["host"].endswith(f".{domain}")
    assert out["page"] == ["js over tls", 200]
    assert out["download"] == ["js over tls", 200]


def _rogue_leaf(ca_dir: Path, name: str) -> x509.Certificate:
    """What a thief of the local CA's key could sign: a well-formed server certificate (key
    identifier, server-auth usage) for any name."""
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    raw_key = (ca_dir / "private" / "ca-key.pem").read_bytes()
    ca_key = serialization.load_pem_private_key(raw_key, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _verify(ca_pem: bytes, leaf: x509.Certificate, name: str) -> None:
    store = Store(x509.load_pem_x509_certificates(ca_pem))
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
    verifier.verify(leaf, [])


def test_the_local_ca_is_kept_and_names_only_its_domain(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, domain=f"{DOMAIN}:3002", tls=TlsSettings(mode="local"))
    first = tls.prepare(settings)
    assert first is not None and first.ca is not None and first.bundle is not None
    ca, leaf = first.ca.read_bytes(), first.cert.read_bytes()
    assert first.bundle.read_bytes().endswith(ca)
    private = tmp_path / "tls" / "private"
    assert private.stat().st_mode & 0o077 == 0 and first.key.parent == private
    assert (private / "ca-key.pem").stat().st_mode & 0o077 == 0
    assert first.key.stat().st_mode & 0o077 == 0
    for public in (first.ca, first.bundle, first.cert):  # what users point clients at
        assert public.stat().st_mode & 0o004

    again = tls.prepare(settings)  # a restart keeps what clients already trust
    assert again == first and again.ca is not None
    assert (again.ca.read_bytes(), again.cert.read_bytes()) == (ca, leaf)

    served = x509.load_pem_x509_certificate(leaf)
    for name in (f"49983-iabc.{DOMAIN}", DOMAIN, "localhost"):
        _verify(ca, served, name)
    with pytest.raises(VerificationError):
        _verify(ca, served, "other.test")
    # The same well-formed certificate passes for a name inside the constraints and fails
    # outside them: the name constraints, nothing else, refuse it.
    inside = f"rogue.{DOMAIN}"
    _verify(ca, _rogue_leaf(tmp_path / "tls", inside), inside)
    with pytest.raises(VerificationError, match="constraint"):
        _verify(ca, _rogue_leaf(tmp_path / "tls", "bank.example"), "bank.example")

    # A key that no longer matches its certificate (a crash between the two writes) is
    # replaced at the next start instead of stopping it.
    first.key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    mended = tls.prepare(settings)
    assert mended is not None and mended.ca is not None
    assert mended.ca.read_bytes() == ca and mended.cert.read_bytes() != leaf

    moved = tls.prepare(replace(settings, domain="elsewhere.test"))
    assert moved is not None and moved.ca is not None
    assert moved.ca.read_bytes() != ca  # its constraints could not cover the new name
    _verify(
        moved.ca.read_bytes(),
        x509.load_pem_x509_certificate(moved.cert.read_bytes()),
        "3000-iabc.elsewhere.test",
    )


def test_the_operators_certificate_is_served(tmp_path: Path) -> None:
    # The operator's own CA and a wildcard certificate from it (as from their PKI).
    ca, cert, key = ca_and_certificate(tmp_path / "operator", ["*.op.test"], "operator CA")
    server = ServerProcess(
        tmp_path / "data",
        env={
            "EMBERBOX_TLS_CERT": str(cert),
            "EMBERBOX_TLS_KEY": str(key),
            "EMBERBOX_DOMAIN": "op.test",
        },
    )
    server.start()
    try:
        for port, path in ((server.api_port, "/health"), (server.proxy_port, "/")):
            host = f"api.op.test:{port}" if path == "/health" else f"49983-iabc.op.test:{port}"
            done = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--cacert",
                    str(ca),
                    "--resolve",
                    f"{host}:127.0.0.1",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    f"https://{host}{path}",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout in ("200", "502")  # 502: the proxy knows no such sandbox
        assert not (server.data_dir / "tls").exists()  # no local CA was made
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"EMBERBOX_TLS": "local"}, "set EMBERBOX_DOMAIN"),
        ({"EMBERBOX_TLS": "yes", "EMBERBOX_DOMAIN": DOMAIN}, "use 'local'"),
        ({"EMBERBOX_TLS_CERT": "/nonexistent.pem", "EMBERBOX_DOMAIN": DOMAIN}, "go together"),
        (
            {
                "EMBERBOX_TLS_CERT": "/nonexistent.pem",
                "EMBERBOX_TLS_KEY": "/nonexistent.key",
                "EMBERBOX_DOMAIN": DOMAIN,
            },
            "cannot use EMBERBOX_TLS_CERT=/nonexistent.pem",
        ),
        (
            {"EMBERBOX_TLS": "local", "EMBERBOX_TLS_KEY": "/k.pem", "EMBERBOX_DOMAIN": DOMAIN},
            "unset EMBERBOX_TLS_CERT/KEY",
        ),
    ],
)
def test_bad_tls_settings_stop_the_server_before_anything_starts(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    server = ServerProcess(tmp_path, env=env)
    done = subprocess.run(
        [sys.executable, "-m", "emberbox.cli", "server"],
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert says in done.stderr + done.stdout
    assert not (tmp_path / "emberbox.db").exists() and not (tmp_path / "tls").exists()
