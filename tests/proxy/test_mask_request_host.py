"""``network.maskRequestHost``: the Host header a sandbox's servers see on requests through the
proxy (``${PORT}`` becomes the port), for HTTP and WebSockets, header and host routing; envd's
port is never masked (forks keep the mask: tests/api/test_network.py). Dev servers that check
Host (Vite, webpack, Django's ALLOWED_HOSTS) then accept proxied requests."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets
from e2b import Sandbox

from emberbox.host.ports import free_loopback_port
from emberbox.server.testing import ServerProcess

MASK = "localhost:${PORT}"

_ECHO_HOST = textwrap.dedent(
    """
    import asyncio, sys
    from http import HTTPStatus
    from websockets.asyncio.server import serve
    from websockets.http11 import Response
    from websockets.datastructures import Headers

    async def echo(ws):
        await ws.send("ws host=" + ws.request.headers["Host"])

    def plain(connection, request):  # a plain GET answers with the Host it got
        if request.headers.get("Upgrade", "").lower() != "websocket":
            body = ("http host=" + request.headers["Host"]).encode()
            return Response(200, "OK", Headers({"Content-Length": str(len(body))}), body)
        return None

    async def main():
        async with serve(echo, "127.0.0.1", int(sys.argv[1]), process_request=plain):
            await asyncio.Future()

    asyncio.run(main())
    """
)


@pytest.fixture
def masked(proxy_server: ServerProcess, sandbox: Sandbox) -> Iterator[Sandbox]:
    """A sandbox with a mask next to the plain ``sandbox`` fixture (same server, SDK env)."""
    sbx = Sandbox.create(timeout=120, network={"mask_request_host": MASK})
    try:
        yield sbx
    finally:
        sbx.kill()


def _serve(sbx: Sandbox, port: int, url: str) -> dict[str, str]:
    home = sbx.commands.run("pwd").stdout.strip()
    sbx.files.write(f"{home}/echo_host.py", _ECHO_HOST)
    sbx.commands.run(f"exec {sys.executable} {home}/echo_host.py {port}", background=True)
    routing = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(port)}
    deadline = time.monotonic() + 10
    while httpx.get(url + "/", headers=routing).status_code == 502:
        assert time.monotonic() < deadline, "user server never came up"
        time.sleep(0.1)
    return routing


def test_the_mask_is_the_host_a_sandbox_server_sees(
    proxy_server: ServerProcess, sandbox: Sandbox, masked: Sandbox
) -> None:
    url = proxy_server.sandbox_url
    port = free_loopback_port()
    by_header = _serve(masked, port, url)
    by_host = {"Host": masked.get_host(port)}
    for routing in (by_header, by_host):
        r = httpx.get(url + "/", headers=routing)
        assert r.status_code == 200 and r.text == f"http host=localhost:{port}", r.text

    async def ws_host() -> str:
        async with websockets.connect(
            url.replace("http://", "ws://") + "/", additional_headers=by_header
        ) as ws:
            return str(await ws.recv())

    assert asyncio.run(ws_host()) == f"ws host=localhost:{port}"

    # Without a mask the server sees the proxy's upstream Host (the sandbox's own address).
    plain_port = free_loopback_port()
    plain = _serve(sandbox, plain_port, url)
    assert httpx.get(url + "/", headers=plain).text == f"http host=127.0.0.1:{plain_port}"

    info = httpx.get(
        f"{proxy_server.api_url}/sandboxes/{masked.sandbox_id}",
        headers={"X-API-KEY": proxy_server.first_key or ""},
    ).json()
    assert info["network"] == {"maskRequestHost": MASK}
    assert masked.commands.run("echo envd").stdout == "envd\n"  # the SDK still works


def test_envds_port_is_never_masked() -> None:
    """envd ignores Host, so a request cannot show it: the proxy's decision is checked."""
    from emberbox.server.proxy.resolver import Location
    from emberbox.vocabulary import ENVD_PORT

    masked = Location(envd_url="http://10.0.0.2:49983", host="10.0.0.2", mask_host=MASK)
    assert masked.host_header(ENVD_PORT) is None
    assert masked.host_header(3000) == "localhost:3000"
    assert Location(envd_url="http://10.0.0.2:49983", host="10.0.0.2").host_header(3000) is None
