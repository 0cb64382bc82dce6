"""The proxy in front of real sandboxes: errors, streaming without buffering, bodies, WebSockets."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import textwrap
import time

import httpx
import pytest
import websockets
from e2b import Sandbox
from e2b.exceptions import SandboxException
from websockets.typing import Subprotocol

from emberbox.host.ports import free_loopback_port
from emberbox.server.testing import ServerProcess


def _headers(sid: str, port: int) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(port)}


def test_unknown_sandbox_is_502_not_found(proxy_server: ServerProcess) -> None:
    r = httpx.get(proxy_server.sandbox_url + "/health", headers=_headers("x" * 20, 49983))
    assert r.status_code == 502
    assert r.json() == {"sandboxId": "x" * 20, "message": "The sandbox was not found", "code": 502}
    r = httpx.get(proxy_server.sandbox_url + "/", headers={"Host": f"8000-{'y' * 20}.localhost"})
    assert r.status_code == 502 and r.json()["sandboxId"] == "y" * 20


def test_bad_route_is_400_json(proxy_server: ServerProcess) -> None:
    r = httpx.get(proxy_server.sandbox_url + "/x", headers={"E2b-Sandbox-Id": "abc"})
    assert r.status_code == 400 and r.json()["code"] == 400
    assert httpx.get(proxy_server.sandbox_url + "/health").json() == {"status": "ok"}


def test_closed_port_and_killed_sandbox(proxy_server: ServerProcess, sandbox: Sandbox) -> None:
    port = free_loopback_port()
    r = httpx.get(proxy_server.sandbox_url + "/", headers=_headers(sandbox.sandbox_id, port))
    assert r.status_code == 502
    assert r.json() == {
        "sandboxId": sandbox.sandbox_id,
        "message": "The sandbox is running but port is not open",
        "port": port,
        "code": 502,
    }
    ok = httpx.get(
        proxy_server.sandbox_url + "/health", headers=_headers(sandbox.sandbox_id, 49983)
    )
    assert ok.status_code == 204
    sandbox.kill()
    r = httpx.get(proxy_server.sandbox_url + "/health", headers=_headers(sandbox.sandbox_id, 49983))
    assert r.status_code == 502 and r.json()["message"] == "The sandbox was not found"
    # the SDK turns that body into "not running"
    with pytest.raises(SandboxException, match=r"not found|not running"):
        sandbox.commands.run("echo too late")


def test_process_output_streams_without_buffering(sandbox: Sandbox) -> None:
    seen: list[tuple[float, str]] = []
    start = time.monotonic()
    result = sandbox.commands.run(
        "echo first; sleep 1.5; echo second",
        on_stdout=lambda line: seen.append((time.monotonic() - start, line.strip())),
    )
    assert result.stdout == "first\nsecond\n"
    assert [line for _, line in seen] == ["first", "second"]
    assert seen[0][0] < 1.0, "first line was held back until the process ended"
    assert seen[1][0] - seen[0][0] >= 1.2


_STREAMER = textwrap.dedent(
    """
    import sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                data = f"tick {i}\\n".encode()
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.7)
            self.wfile.write(b"0\\r\\n\\r\\n")
        def do_POST(self):
            import hashlib
            n = 0
            h = hashlib.sha256()
            if self.headers.get("Transfer-Encoding") == "chunked":
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    chunk = self.rfile.read(size)
                    self.rfile.readline()
                    h.update(chunk); n += len(chunk)
            else:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                h.update(body); n = len(body)
            out = f"{n} {h.hexdigest()}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        def log_message(self, *a):
            pass

    HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def _start_user_server(sandbox: Sandbox, home: str, script: str, port: int, url: str) -> None:
    sandbox.files.write(f"{home}/server.py", script)
    sandbox.commands.run(f"exec {sys.executable} {home}/server.py {port}", background=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            r = httpx.get(url + "/health", headers=_headers(sandbox.sandbox_id, port))
            if r.status_code != 502:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "user server never came up"
        time.sleep(0.1)


def test_user_port_streaming_and_request_bodies(
    proxy_server: ServerProcess, sandbox: Sandbox, sandbox_home: str
) -> None:
    port = free_loopback_port()
    url = proxy_server.sandbox_url
    _start_user_server(sandbox, sandbox_home, _STREAMER, port, url)
    host = {"Host": sandbox.get_host(port)}

    arrivals = []
    start = time.monotonic()
    with httpx.stream("GET", url + "/stream", headers=host) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            arrivals.append((time.monotonic() - start, chunk))
    assert b"".join(c for _, c in arrivals) == b"tick 0\ntick 1\ntick 2\n"
    assert arrivals[0][0] < 0.6, "first chunk was buffered"
    assert arrivals[-1][0] >= 1.3

    payload = os.urandom(3 * 1024 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    r = httpx.post(url + "/upload", headers=host, content=payload)
    assert r.text == f"{len(payload)} {digest}"

    def gen():
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    r = httpx.post(url + "/upload", headers=host, content=gen())  # chunked request body
    assert r.text == f"{len(payload)} {digest}"


def test_large_file_round_trip_through_envd(sandbox: Sandbox, sandbox_home: str) -> None:
    data = os.urandom(8 * 1024 * 1024)
    sandbox.files.write(f"{sandbox_home}/big.bin", data)
    assert sandbox.files.read(f"{sandbox_home}/big.bin", format="bytes") == data


_WS_ECHO = textwrap.dedent(
    """
    import asyncio, sys
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send(message if isinstance(message, bytes) else "echo:" + message)

    async def main():
        async with serve(echo, "127.0.0.1", int(sys.argv[1]), subprotocols=["chat"]):
            await asyncio.Future()

    asyncio.run(main())
    """
)


def test_websockets(proxy_server: ServerProcess, sandbox: Sandbox, sandbox_home: str) -> None:
    port = free_loopback_port()
    _start_user_server(sandbox, sandbox_home, _WS_ECHO, port, proxy_server.sandbox_url)
    ws_url = proxy_server.sandbox_url.replace("http://", "ws://") + "/chat"

    async def talk() -> None:
        async with websockets.connect(
            ws_url,
            additional_headers=_headers(sandbox.sandbox_id, port),
            subprotocols=[Subprotocol("chat")],
        ) as ws:
            assert ws.subprotocol == "chat"
            await ws.send("hello")
            assert await ws.recv() == "echo:hello"
            blob = os.urandom(200_000)
            await ws.send(blob)
            assert await ws.recv() == blob

        with pytest.raises(websockets.exceptions.InvalidStatus) as err:
            async with websockets.connect(ws_url, additional_headers=_headers("q" * 20, port)):
                pass
        assert err.value.response.status_code == 502
        assert b"The sandbox was not found" in err.value.response.body

    asyncio.run(talk())


_WS_GATED = _WS_ECHO.replace(
    "async def main():",
    """from http import HTTPStatus

def gate(connection, request):
    if request.path == "/forbidden":
        return connection.respond(HTTPStatus.FORBIDDEN, "no entry\\n")
    return None

async def main():""",
).replace('subprotocols=["chat"]', 'subprotocols=["chat"], process_request=gate')


def test_websocket_refused_by_the_sandbox_server_is_relayed(
    proxy_server: ServerProcess, sandbox: Sandbox, sandbox_home: str
) -> None:
    """The sandbox's server refuses the upgrade: the client sees its answer, not a proxy error."""
    port = free_loopback_port()
    _start_user_server(sandbox, sandbox_home, _WS_GATED, port, proxy_server.sandbox_url)
    base = proxy_server.sandbox_url.replace("http://", "ws://")

    async def attempt() -> tuple[int, bytes]:
        try:
            async with websockets.connect(
                base + "/forbidden", additional_headers=_headers(sandbox.sandbox_id, port)
            ):
                return 101, b""
        except websockets.exceptions.InvalidStatus as e:
            return e.response.status_code, bytes(e.response.body or b"")

    assert asyncio.run(attempt()) == (403, b"no entry\n")
