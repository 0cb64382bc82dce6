"""A "fake internet" for egress tests: web servers in a network namespace this test made,
routed from the host through a veth pair, so tests never send traffic to a real address.

"Public" addresses come from 198.18.0.0/15 (RFC 2544, set aside for benchmark networks):
nothing outside this machine answers there. A test may also ask for addresses that stand for
internal networks (``internal=("169.254.169.254", "10.213.7.10")``): they are put on the same
namespace and routed to it with a /32 host route, so a test can show a sandbox cannot reach
"the metadata service" without a packet ever going to the real one. Every server answers
``GET /`` on :data:`PORT` with ``fake internet <tag> <address it was reached at>``.

The namespace hangs off a private /30 link rather than a 198.18 subnet on the host, so the
public addresses are one routed hop away, as on the internet, and never one of the host's
directly attached networks (which the node refuses by default).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

PORT = 8080

_SERVER = """
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = (sys.argv[1] + " " + self.connection.getsockname()[0]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b)))
        self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(("0.0.0.0", int(sys.argv[2])), H).serve_forever()
"""


@dataclass(frozen=True)
class FakeInternet:
    public: tuple[str, ...]  # "public" addresses (198.18.0.0/15)
    internal: tuple[str, ...]  # stand-ins for internal addresses the test asked for
    port: int
    tag: str

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


@contextlib.contextmanager
def fake_internet(internal: Sequence[str] = (), public: int = 2) -> Iterator[FakeInternet]:
    """Servers answering at ``public`` addresses of 198.18.<n>.0/24 and at ``internal``;
    everything (namespace, veth, host routes) is removed afterwards."""
    tag = secrets.token_hex(2)
    n = int(tag, 16) % 250 + 1
    link = int(tag, 16) % 64 * 4
    host_ip, ns_ip = f"10.250.{n}.{link + 1}", f"10.250.{n}.{link + 2}"
    ns, host_if, ns_if = f"ebtinet{tag}", f"ebti{tag}", f"ebtn{tag}"
    addresses = [f"198.18.{n}.{10 + i}" for i in range(public)]
    routes: list[str] = []
    _ip("netns", "add", ns)
    server: subprocess.Popen[bytes] | None = None
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
        yield FakeInternet(tuple(addresses), tuple(internal), PORT, tag)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for dest in routes:
            subprocess.run(["ip", "route", "delete", dest], capture_output=True)
        subprocess.run(["ip", "link", "delete", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
