"""Upstream failures passed on as what they are: a dead sandbox breaks the client's stream, a stale
pooled connection is retried (a request the upstream may have acted on only if it may get it
twice: tests/proxy/test_replays.py), and only a refused fresh connection means "port is not
open"."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from e2b import Sandbox
from e2b.exceptions import SandboxNotRunningException, SandboxUnreachableException

from emberbox.host.ports import free_loopback_port
from emberbox.server.testing import ServerProcess

from .test_forwarding import _headers, _start_user_server


def test_sandbox_killed_mid_stream_is_reported_as_killed(sandbox: Sandbox) -> None:
    """The SDK gets its "killed" error, not ``[unknown] missing EndStreamResponse``: the proxy
    breaks the client's connection, so the SDK probes the sandbox and finds it gone."""
    handle = sandbox.commands.run("sleep 60", background=True)  # the stream is open now
    assert Sandbox.kill(sandbox.sandbox_id)
    with pytest.raises(SandboxNotRunningException) as err:
        handle.wait()
    assert "killed or reached its end of life while the request was in flight" in str(err.value)
    assert "end event" not in str(err.value) and "EndStreamResponse" not in str(err.value)


def test_envd_killed_under_a_stream_breaks_it(
    proxy_server: ServerProcess, sandbox: Sandbox
) -> None:
    """envd dies while the sandbox is still recorded as running: the stream breaks and the
    SDK's probe finds envd's port closed, which it reports as unreachable."""
    handle = sandbox.commands.run("sleep 60", background=True)
    os.kill(proxy_server.live_sandbox_processes()[sandbox.sandbox_id], signal.SIGKILL)
    with pytest.raises((SandboxUnreachableException, SandboxNotRunningException)) as err:
        handle.wait()
    assert "end event" not in str(err.value) and "EndStreamResponse" not in str(err.value)


# Answers "<path> <n>" where n counts requests on the connection. A request to /idle that is not
# a connection's first is dropped unanswered: an upstream whose idle timeout fired as the request
# arrived. /junk answers with bytes after its body: a response that leaves the connection broken.
_FLAKY = textwrap.dedent(
    """
    import socket, sys, threading

    def serve(conn):
        buf, n = b"", 0
        with conn:
            while True:
                while b"\\r\\n\\r\\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\\r\\n\\r\\n")
                lines = head.decode("latin-1").split("\\r\\n")
                path = lines[0].split(" ")[1]
                fields = dict(l.lower().split(": ", 1) for l in lines[1:])
                size = int(fields.get("content-length", 0))
                while len(buf) < size:
                    buf += conn.recv(65536)
                body, buf = buf[:size], buf[size:]
                n += 1
                if path.startswith("/idle") and n > 1:
                    return
                out = f"{path} {n} {len(body)}".encode()
                extra = b"junk the proxy must not read as a response" if path == "/junk" else b""
                head = b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(out)
                conn.sendall(head + out + extra)

    s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    """
)


def test_stale_pooled_connections_are_retried_on_a_fresh_one(
    proxy_server: ServerProcess, sandbox: Sandbox, sandbox_home: str
) -> None:
    port = free_loopback_port()
    url = proxy_server.sandbox_url
    _start_user_server(sandbox, sandbox_home, _FLAKY, port, url)
    route = _headers(sandbox.sandbox_id, port)
    with httpx.Client(base_url=url, headers=route) as c:
        assert c.get("/first").status_code == 200  # (re)uses a pooled connection
        # the pooled connection is dropped unanswered: resent on a new connection
        r = c.get("/idle")
        assert (r.status_code, r.text) == (200, "/idle 1 0")
        assert c.get("/again").text == "/again 1 0"  # the one-off connection was not pooled
        # a POST the upstream got whole may have been acted on: not sent again (Go's rule)
        r = c.post("/idle-post", content=b"x" * 1000)
        assert r.status_code == 502
        assert r.json()["message"] == "The sandbox's server closed the connection without answering"
        assert c.get("/warm").status_code == 200
        r = c.post("/idle-post", content=b"x" * 1000, headers={"Idempotency-Key": "k"})
        assert (r.status_code, r.text) == (200, "/idle-post 1 1000")  # one that may be: sent

        assert c.get("/junk").status_code == 200
        r = c.get("/after-junk")
        assert (r.status_code, r.text) == (200, "/after-junk 1 0")

        # a body still streaming in cannot be replayed: 502, but not "port is not open"
        def slow_body() -> Iterator[bytes]:
            yield b"a" * 10
            time.sleep(0.5)
            yield b"b" * 10

        assert c.get("/warm").status_code == 200
        r = c.post("/idle-stream", content=slow_body())
        assert r.status_code == 502
        assert r.json()["message"] == "The sandbox's server closed the connection without answering"


# A WebSocket server that accepts, sends one message, then dies without a closing handshake.
_WS_DIES = textwrap.dedent(
    """
    import asyncio, os, sys
    from websockets.asyncio.server import serve

    async def hello_then_die(ws):
        await ws.send("hello")
        await asyncio.sleep(0.3)
        os._exit(1)

    async def main():
        async with serve(hello_then_die, "127.0.0.1", int(sys.argv[1])):
            await asyncio.Future()

    asyncio.run(main())
    """
)


def test_websocket_upstream_dying_drops_the_client(
    proxy_server: ServerProcess, sandbox: Sandbox, sandbox_home: str
) -> None:
    """The client sees the connection drop (1006, no close frame), not a clean 1011 close."""
    port = free_loopback_port()
    _start_user_server(sandbox, sandbox_home, _WS_DIES, port, proxy_server.sandbox_url)
    ws_url = proxy_server.sandbox_url.replace("http://", "ws://") + "/"

    async def talk() -> websockets.exceptions.ConnectionClosed:
        async with websockets.connect(
            ws_url, additional_headers=_headers(sandbox.sandbox_id, port)
        ) as ws:
            assert await ws.recv() == "hello"
            with pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value

    closed = asyncio.run(talk())
    assert closed.rcvd is None, f"the proxy sent a close frame: {closed.rcvd}"


# Writes one line per request to the file in argv[2]: "<path> whole" once a chunked body's last
# chunk arrived, "<path> cut" when the connection closed before it; "/hang" is never answered,
# and "<path> closed" is written when the proxy drops its connection.
_RECORDER = textwrap.dedent(
    """
    import socket, sys, threading

    def note(line):
        with open(sys.argv[2], "a") as f:
            f.write(line + "\\n")

    def serve(conn):
        data = b""
        with conn:
            while b"\\r\\n\\r\\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ")[1].decode()
            if path == "/hang":
                while conn.recv(65536):
                    pass
                note(path + " closed")
                return
            head, _, body = data.partition(b"\\r\\n\\r\\n")
            length = [int(line.split(b":")[1]) for line in head.lower().split(b"\\r\\n")
                      if line.startswith(b"content-length:")]
            chunked = b"transfer-encoding: chunked" in head.lower()
            if chunked or length:  # (framed as its client framed it)
                end = b"\\r\\n0\\r\\n\\r\\n"
                while not (data.endswith(end) if chunked else len(body) >= length[0]):
                    chunk = conn.recv(65536)
                    if not chunk:
                        note(path + " cut")
                        return
                    data, body = data + chunk, body + chunk
                note(path + " whole")
            head = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\n"
            conn.sendall(head + b"ok")

    s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    """
)


def _recorded(path: str, line: str) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if line in Path(path).read_text().splitlines():
                return True
        time.sleep(0.05)
    return False


def _raw_request(url: str, head: bytes, body: bytes) -> None:
    """Send a request's head and part of its body, then leave without reading an answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80)) as s:
        s.sendall(head + body)
        time.sleep(0.5)  # (the proxy has forwarded what it got)


def test_a_client_that_leaves_is_never_passed_on_as_a_whole_request(
    proxy_server: ServerProcess, sandbox: Sandbox, sandbox_home: str
) -> None:
    """An upload cut off by its client reaches the sandbox's server cut off, not as a whole
    (shorter) body; a request left unanswered when its client leaves releases its connection
    to the sandbox at once, not when the sandbox's server answers (it never does here)."""
    port = free_loopback_port()
    url = proxy_server.sandbox_url
    log = f"{sandbox_home}/requests.log"
    sandbox.files.write(f"{sandbox_home}/recorder.py", _RECORDER)
    sandbox.commands.run(f"exec {sys.executable} {sandbox_home}/recorder.py {port} {log}",
                         background=True)  # fmt: skip
    host = sandbox.get_host(port)
    deadline = time.monotonic() + 10
    while httpx.get(url + "/health", headers={"Host": host}).status_code == 502:
        assert time.monotonic() < deadline, "user server never came up"
        time.sleep(0.1)

    def slowly() -> Iterator[bytes]:  # (in several messages: the proxy streams it on)
        for _ in range(3):
            yield b"a" * 1000
            time.sleep(0.1)

    r = httpx.put(url + "/whole", headers={"Host": host}, content=slowly())
    assert r.status_code == 200 and _recorded(log, "/whole whole")

    head = f"PUT /cut HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\n".encode()
    _raw_request(url, head, b"a" * 1000)
    assert _recorded(log, "/cut cut"), Path(log).read_text()
    assert "/cut whole" not in Path(log).read_text()

    _raw_request(url, f"GET /hang HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), b"")
    assert _recorded(log, "/hang closed"), Path(log).read_text()
