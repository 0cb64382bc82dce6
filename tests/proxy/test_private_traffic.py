"""``allowPublicTraffic: false``: a sandbox's ports answer only requests carrying the traffic
access token the create returned (header ``e2b-traffic-access-token``), through header and host
routing, HTTP and WebSockets; envd's port is exempt (it checks its own access token)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets
import websockets.exceptions
from e2b import Sandbox
from websockets.typing import Subprotocol

from emberbox.host.ports import free_loopback_port
from emberbox.server.testing import ServerProcess

from .test_forwarding import _WS_ECHO

TOKEN_HEADER = "e2b-traffic-access-token"


@pytest.fixture
def private(proxy_server: ServerProcess, sandbox: Sandbox) -> Iterator[Sandbox]:
    """A private sandbox next to the public ``sandbox`` fixture (same server, same SDK env)."""
    sbx = Sandbox.create(timeout=120, network={"allow_public_traffic": False})
    try:
        yield sbx
    finally:
        sbx.kill()


def _serve(sbx: Sandbox, script: str, port: int, url: str, token: str | None) -> None:
    home = sbx.commands.run("pwd").stdout.strip()
    sbx.files.write(f"{home}/server.py", script)
    sbx.commands.run(f"exec {sys.executable} {home}/server.py {port}", background=True)
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(port)}
    if token:
        headers[TOKEN_HEADER] = token
    deadline = time.monotonic() + 10
    while httpx.get(url + "/", headers=headers).status_code == 502:
        assert time.monotonic() < deadline, "user server never came up"
        time.sleep(0.1)


_HTTP = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "7"); self.end_headers()
        self.wfile.write(b"private")
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_http_needs_the_token_by_header_and_host_routing(
    proxy_server: ServerProcess, sandbox: Sandbox, private: Sandbox
) -> None:
    token = private.traffic_access_token
    assert token and sandbox.traffic_access_token is None
    port = free_loopback_port()
    url = proxy_server.sandbox_url
    _serve(private, _HTTP, port, url, token)
    by_header = {"E2b-Sandbox-Id": private.sandbox_id, "E2b-Sandbox-Port": str(port)}
    by_host = {"Host": private.get_host(port)}
    for routing in (by_header, by_host):
        r = httpx.get(url + "/", headers=routing)
        assert r.status_code == 401, r.text
        assert r.json()["code"] == 401 and TOKEN_HEADER in r.json()["message"]
        assert httpx.get(url + "/", headers={**routing, TOKEN_HEADER: "wrong"}).status_code == 401
        r = httpx.get(url + "/", headers={**routing, TOKEN_HEADER: token})
        assert r.status_code == 200 and r.text == "private"
    # envd's port is exempt; the SDK keeps working without sending the traffic token
    assert private.commands.run("echo envd").stdout == "envd\n"
    # a public sandbox's port needs nothing
    public_port = free_loopback_port()
    _serve(sandbox, _HTTP, public_port, url, None)
    assert httpx.get(url + "/", headers={"Host": sandbox.get_host(public_port)}).text == "private"
    # the token is reported, and in get_info the network says it is private
    assert private.get_info().network is not None


def test_websockets_need_the_token(proxy_server: ServerProcess, private: Sandbox) -> None:
    token = private.traffic_access_token
    assert token
    port = free_loopback_port()
    url = proxy_server.sandbox_url
    _serve(private, _WS_ECHO, port, url, token)
    ws_url = url.replace("http://", "ws://") + "/chat"
    routing = {"E2b-Sandbox-Id": private.sandbox_id, "E2b-Sandbox-Port": str(port)}

    async def talk() -> None:
        with pytest.raises(websockets.exceptions.InvalidStatus) as err:
            async with websockets.connect(ws_url, additional_headers=routing):
                pass
        assert err.value.response.status_code == 401
        async with websockets.connect(
            ws_url,
            additional_headers={**routing, TOKEN_HEADER: token},
            subprotocols=[Subprotocol("chat")],
        ) as ws:
            await ws.send("hi")
            assert await ws.recv() == "echo:hi"

    asyncio.run(talk())
