"""A "fake internet" for egress tests: web servers in a network namespace this test made,
routed from the host through a veth pair, so tests never send traffic to a real address.

"Public" addresses come from 198.18.0.0/15 (RFC 2544, set aside for benchmark networks):
nothing outside this machine answers there. A test may also ask for addresses that stand for
internal networks (``internal=("169.254.169.254", "10.213.7.10")``): they are put on the same
namespace and routed to it with a /32 host route, so a test can show a sandbox cannot reach
"the metadata service" without a packet ever going to the real one. Every server answers
``GET /`` on :data:`PORT` with ``fake internet <tag> <address it was reached at>`` (and
``GET /whoami`` with the address the connection came from).

With ``names``, the namespace is also a small named internet: a DNS server (``dnslib``) on the
first public address answers those names (and logs every name it is asked, so a test can show
a name never left the host), and web servers on ports 80 and 443 (HTTPS, a certificate for
every name from the fake internet's own CA, ``ca_pem``) answer
``fake internet <tag> <Host> <address it was reached at>`` (and ``/bytes/<n>`` with n bytes).

The namespace hangs off a private /30 link rather than a 198.18 subnet on the host, so the
public addresses are one routed hop away, as on the internet, and never one of the host's
directly attached networks (which the node refuses by default).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.pki import ca_and_certificate

PORT = 8080

_SERVER = """
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = (sys.argv[1] + " " + self.connection.getsockname()[0]).encode()
        if self.path == "/whoami":  # where the connection came from (a proxy, or the host)
            b = self.client_address[0].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b)))
        self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(("0.0.0.0", int(sys.argv[2])), H).serve_forever()
"""


_NAMED = """
import hashlib, http.server, json, os, socketserver, ssl, sys, threading
from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer
tag, dns_ip, log_path, cert, key = sys.argv[1:6]
names = dict(a.split("=", 1) for a in sys.argv[6:])
requests_log = os.path.join(os.path.dirname(log_path), "requests.log")
def seen(handler, body=b""):
    entry = {"path": handler.path, "method": handler.command, "headers": dict(handler.headers),
             "body_sha256": hashlib.sha256(body).hexdigest(),
             "client": handler.client_address[0]}
    with open(requests_log, "a") as f: f.write(json.dumps(entry) + "\\n")
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen(self, body)
        b = ("posted %d bytes %s" % (len(body), hashlib.sha256(body).hexdigest())).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b)))
        self.end_headers(); self.wfile.write(b)
    def do_GET(self):
        seen(self)
        if self.headers.get("Upgrade"):  # a protocol switch: then every byte is echoed
            self.send_response(101); self.send_header("Upgrade", self.headers["Upgrade"])
            self.send_header("Connection", "Upgrade"); self.end_headers(); self.wfile.flush()
            while data := self.connection.recv(65536): self.connection.sendall(data)
            self.close_connection = True
            return
        if self.path.startswith("/bytes/"):  # bulk downloads for benchmarks
            n = int(self.path[7:]); chunk = bytes(65536)
            self.send_response(200); self.send_header("Content-Length", str(n))
            self.end_headers()
            while n > 0:
                self.wfile.write(chunk[:n]); n -= len(chunk)
            return
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        b = (tag + " " + host + " " + self.connection.getsockname()[0]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b)))
        self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
plain, tls = S(("0.0.0.0", 80), H), S(("0.0.0.0", 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
class R(BaseResolver):
    def resolve(self, request, handler):
        name = str(request.q.qname).rstrip(".").lower()
        with open(log_path, "a") as f: f.write(name + "\\n")
        reply = request.reply()
        if name not in names: reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(names[name]), ttl=5))
        return reply
quiet = DNSLogger(logf=lambda _line: None)
for t in (False, True): DNSServer(R(), address=dns_ip, port=53, tcp=t, logger=quiet).start_thread()
threading.Thread(target=tls.serve_forever, daemon=True).start()
plain.serve_forever()
"""


@dataclass(frozen=True)
class FakeInternet:
    public: tuple[str, ...]  # "public" addresses (198.18.0.0/15)
    internal: tuple[str, ...]  # stand-ins for internal addresses the test asked for
    port: int
    tag: str
    names: Mapping[str, str] = field(default_factory=dict)  # name -> address it resolves to
    workdir: Path | None = None

    @property
    def netns(self) -> str:
        """The namespace everything runs in (a test may start more servers there)."""
        return f"ebtinet{self.tag}"

    @property
    def node_env(self) -> dict[str, str]:
        """What a node needs to use this internet: its resolver for the egress gateway, and its
        CA for the servers the gateway re-encrypts to (header rules)."""
        assert self.workdir is not None, "the fake internet has no names"
        return {"EMBERBOX_EGRESS_DNS": self.dns, "EMBERBOX_EGRESS_CA": str(self.workdir / "ca.pem")}

    @property
    def dns(self) -> str:
        """The fake internet's resolver (with ``names``): its first public address."""
        return self.public[0]

    @property
    def ca_pem(self) -> str:
        assert self.workdir is not None, "the fake internet has no names"
        return (self.workdir / "ca.pem").read_text()

    def queried(self) -> list[str]:
        """Every name the fake resolver was asked for, in order."""
        assert self.workdir is not None, "the fake internet has no names"
        log = self.workdir / "queries.log"
        return log.read_text().split() if log.exists() else []

    def requests(self) -> list[dict[str, Any]]:
        """Every request the named web servers got: path, method, headers, body's sha256."""
        assert self.workdir is not None, "the fake internet has no names"
        log = self.workdir / "requests.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [json.loads(line) for line in lines]

    def named_body(self, name: str) -> str:
        """What the web servers on 80/443 answer for ``name``."""
        return f"fake internet {self.tag} {name} {self.names[name]}"

    @property
    def address(self) -> str:
        return self.public[0]

    @property
    def body(self) -> str:
        return self.body_of(self.address)

    def body_of(self, address: str) -> str:
        return f"fake internet {self.tag} {address}"

    def url_of(self, address: str) -> str:
        return f"http://{address}:{self.port}/"

    @property
    def url(self) -> str:
        return self.url_of(self.address)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


# Held from picking a place to routing it: another process (an xdist worker) picks next.
_PLACE_LOCK = Path(tempfile.gettempdir()) / "emberbox-fake-internet.lock"


def _free_place() -> tuple[str, int, int]:
    """A tag, with the 198.18.<n>.0/24 and the 10.250.<n>.<link>/30 it names, that nothing on
    the host holds: a run killed before its clean-up leaves its namespace and routes behind
    (one did, and a later run drawing the same n failed at ``ip route add``), and two fake
    internets of one run must not meet either."""
    routes = subprocess.run(["ip", "route", "show"], capture_output=True, text=True).stdout
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for _ in range(1000):
        tag = secrets.token_hex(2)
        n = int(tag, 16) % 250 + 1
        if f"198.18.{n}." not in routes and f"10.250.{n}." not in routes and tag not in spaces:
            return tag, n, int(tag, 16) % 64 * 4
    raise AssertionError("no free place for a fake internet: clean up leftover ebtinet* netns")


@contextlib.contextmanager
def fake_internet(
    internal: Sequence[str] = (), public: int = 2, names: Mapping[str, int] | None = None
) -> Iterator[FakeInternet]:
    """Servers answering at ``public`` addresses of 198.18.<n>.0/24 and at ``internal``;
    ``names`` maps a DNS name to an index into ``public + internal``. Everything (namespace,
    veth, host routes, files) is removed afterwards."""
    placing = _PLACE_LOCK.open("w")  # until its routes are up, no other process picks a place
    fcntl.flock(placing, fcntl.LOCK_EX)
    try:
        tag, n, link = _free_place()
        _ip("netns", "add", ns := f"ebtinet{tag}")
    except BaseException:
        placing.close()
        raise
    host_ip, ns_ip = f"10.250.{n}.{link + 1}", f"10.250.{n}.{link + 2}"
    host_if, ns_if = f"ebti{tag}", f"ebtn{tag}"
    addresses = [f"198.18.{n}.{10 + i}" for i in range(public)]
    routes: list[str] = []
    server: subprocess.Popen[bytes] | None = None
    named: subprocess.Popen[bytes] | None = None
    workdir = Path(tempfile.mkdtemp(prefix="fake-internet-")) if names else None
    resolved = {n: [*addresses, *internal][i] for n, i in (names or {}).items()}
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", host_ip)
        for address in [*addresses, *internal]:
            _ip("-n", ns, "addr", "add", f"{address}/32", "dev", "lo")
        for dest in [f"198.18.{n}.0/24", *(f"{a}/32" for a in internal)]:
            _ip("route", "add", dest, "via", ns_ip)
            routes.append(dest)
        placing.close()
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _SERVER, f"fake internet {tag}",
             str(PORT)]
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             f"import socket; socket.create_connection(({addresses[0]!r}, {PORT}), 1)"],
            capture_output=True,
        ).returncode != 0:  # fmt: skip
            assert time.monotonic() < deadline, "fake internet server did not start"
            time.sleep(0.05)
        if workdir is not None:
            _ca, cert, key = ca_and_certificate(workdir, sorted(resolved), "fake internet CA")
            named = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", _NAMED, f"fake internet {tag}",
                 addresses[0], str(workdir / "queries.log"), str(cert), str(key),
                 *(f"{n}={a}" for n, a in resolved.items())]
            )  # fmt: skip
            while subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c",
                 f"import socket; socket.create_connection(({addresses[0]!r}, 443), 1)"],
                capture_output=True,
            ).returncode != 0:  # fmt: skip
                assert time.monotonic() < deadline + 10, "fake internet web did not start"
                time.sleep(0.05)
        yield FakeInternet(tuple(addresses), tuple(internal), PORT, tag, resolved, workdir)
    finally:
        placing.close()
        for proc in (server, named):
            if proc is not None:
                proc.kill()
                proc.wait()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        for dest in routes:
            subprocess.run(["ip", "route", "delete", dest], capture_output=True)
        subprocess.run(["ip", "link", "delete", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
