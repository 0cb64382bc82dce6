"""A "fake internet" for egress tests: a web server in a network namespace this test made,
reachable from the host through a veth pair, so tests never send traffic to a real address.

The address comes from 198.18.0.0/15 (RFC 2544, set aside for benchmarks and tests): nothing
outside this machine answers there, and it is the namespace's own.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

HOST_IP = "198.18.0.1"
SERVER_IP = "198.18.0.2"
PORT = 8080


@dataclass(frozen=True)
class FakeInternet:
    address: str
    port: int
    body: str

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def fake_internet() -> Iterator[FakeInternet]:
    """A server answering ``body`` at ``SERVER_IP:PORT``; everything is removed afterwards."""
    tag = secrets.token_hex(2)
    ns, host_if, ns_if = f"ebtinet{tag}", f"ebti{tag}", f"ebtn{tag}"
    body = f"fake internet {tag}"
    _ip("netns", "add", ns)
    server: subprocess.Popen[bytes] | None = None
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        _ip("addr", "add", f"{HOST_IP}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{SERVER_IP}/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        script = (
            "import http.server as h\n"
            "class H(h.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            f"        b = {body!r}.encode()\n"
            "        self.send_response(200); self.send_header('Content-Length', str(len(b)))\n"
            "        self.end_headers(); self.wfile.write(b)\n"
            "    def log_message(self, *a): pass\n"
            f"h.HTTPServer(({SERVER_IP!r}, {PORT}), H).serve_forever()\n"
        )
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", script])
        deadline = time.monotonic() + 10
        while subprocess.run(
            ["ip", "netns", "exec", ns, "python3", "-c",
             f"import socket; socket.create_connection(({SERVER_IP!r}, {PORT}), 1)"],
            capture_output=True,
        ).returncode != 0:  # fmt: skip
            assert time.monotonic() < deadline, "fake internet server did not start"
            time.sleep(0.05)
        yield FakeInternet(SERVER_IP, PORT, body)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "delete", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
