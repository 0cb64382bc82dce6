"""What a sandbox's server gets through the proxy: the client's request, framed as the client
framed it, with no header the client did not send (httpx's defaults asked for gzip, and the
compressed answer went raw to a client that never asked), and ``X-Forwarded-*`` only as this
proxy sets them (a client's own ``X-Forwarded-Host`` came first, so apps took it for the
original host). Over plain upstream servers on loopback; no sandbox needed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.types import Message
from websockets.asyncio.server import ServerConnection, serve

from emberbox.server.proxy.app import SandboxProxy

from .loopback import OnLoopback

SANDBOX = "headersandbox0000000"


class _Recorder:
    """An HTTP/1.1 server that records each request's head and body, and answers 200."""

    def __init__(self) -> None:
        self.heads: list[list[tuple[bytes, bytes]]] = []
        self.bodies: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            fields = [tuple(line.split(b": ", 1)) for line in head.split(b"\r\n")[1:] if line]
            headers = [(k.lower(), v) for k, v in fields]
            self.heads.append(headers)
            named = dict(headers)
            if b"content-length" in named:
                body = await reader.readexactly(int(named[b"content-length"]))
            else:  # chunked
                body = b""
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    body += await reader.readexactly(size)
                    await reader.readexactly(2)
                await reader.readexactly(2)
            self.bodies.append(body)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[_Recorder, int, SandboxProxy]]:
    recorder = _Recorder()
    server = await asyncio.start_server(recorder.serve, "127.0.0.1", 0)
    proxy = SandboxProxy(OnLoopback())  # type: ignore[arg-type]
    yield recorder, server.sockets[0].getsockname()[1], proxy
    await proxy.aclose()
    server.close()


def _host(port: int) -> bytes:
    """The Host a client of the sandbox's ``port`` sends (routed by it)."""
    return f"{port}-{SANDBOX}.sbx.example".encode()


def _scope(port: int, headers: list[tuple[bytes, bytes]], kind: str = "http") -> dict[str, Any]:
    return {
        "type": kind,
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http" if kind == "http" else "ws",
        "path": "/upload",
        "raw_path": b"/upload",
        "query_string": b"",
        "client": ("10.9.8.7", 5555),
        "headers": [(b"host", _host(port)), *headers],
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }


async def _call(proxy: SandboxProxy, scope: dict[str, Any], chunks: list[bytes]) -> list[Message]:
    """The request, its body in ``chunks`` (one ASGI message each, as uvicorn hands a body
    larger than a read); what the proxy answered."""
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1}
        for n, chunk in enumerate(chunks)
    ]
    answered: list[Message] = []
    done = asyncio.Event()

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        answered.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await asyncio.wait_for(proxy(scope, receive, send), 10)
    return answered


async def test_a_body_in_pieces_keeps_its_content_length(
    recorded: tuple[_Recorder, int, SandboxProxy],
) -> None:
    """Servers that read exactly Content-Length bytes (``http.server`` handlers, ``php -S``)
    got a chunked body instead."""
    recorder, port, proxy = recorded
    body = [b"a" * 70_000, b"b" * 61_072]
    scope = _scope(port, [(b"content-length", b"131072")])
    answered = await _call(proxy, scope, body)
    assert answered[0]["status"] == 200
    [head] = recorder.heads
    assert (b"content-length", b"131072") in head
    assert b"transfer-encoding" not in dict(head)
    assert recorder.bodies == [b"".join(body)]


async def test_a_body_in_pieces_without_a_length_goes_chunked(
    recorded: tuple[_Recorder, int, SandboxProxy],
) -> None:
    recorder, port, proxy = recorded
    answered = await _call(proxy, _scope(port, []), [b"one", b"two"])
    assert answered[0]["status"] == 200
    assert dict(recorder.heads[0])[b"transfer-encoding"] == b"chunked"
    assert recorder.bodies == [b"onetwo"]


async def test_no_header_the_client_did_not_send_and_forwarded_ones_set_here(
    recorded: tuple[_Recorder, int, SandboxProxy],
) -> None:
    recorder, port, proxy = recorded
    sent = [
        (b"x-forwarded-host", b"evil.example"),
        (b"x-forwarded-for", b"192.0.2.1"),
        (b"connection", b"keep-alive, x-private-hop"),
        (b"x-private-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"x-app", b"kept"),
    ]
    await _call(proxy, _scope(port, sent), [b""])
    head = recorder.heads[0]
    names = [k for k, _ in head]
    for absent in (b"accept-encoding", b"user-agent", b"accept", b"x-private-hop",
                   b"keep-alive", b"proxy-authorization"):  # fmt: skip
        assert absent not in names, absent
    assert [v for k, v in head if k == b"x-forwarded-host"] == [_host(port)]
    assert [v for k, v in head if k == b"x-forwarded-for"] == [b"192.0.2.1, 10.9.8.7"]
    assert (b"x-app", b"kept") in head


async def test_a_websocket_gets_the_same_forwarded_headers_and_no_hop_by_hop_ones() -> None:
    seen: asyncio.Future[dict[str, list[str]]] = asyncio.get_running_loop().create_future()

    async def handler(conn: ServerConnection) -> None:
        headers = conn.request.headers if conn.request is not None else None
        assert headers is not None
        seen.set_result({k.lower(): headers.get_all(k) for k in headers})
        await conn.close()

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    proxy = SandboxProxy(OnLoopback())  # type: ignore[arg-type]
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        spoofed = [(b"x-forwarded-host", b"evil.example"), (b"proxy-authorization", b"eA==")]
        scope = _scope(port, spoofed, kind="websocket")
        to_proxy: asyncio.Queue[Message] = asyncio.Queue()
        await to_proxy.put({"type": "websocket.connect"})
        relay = asyncio.create_task(proxy(scope, to_proxy.get, send))
        headers = await asyncio.wait_for(seen, 10)
        await asyncio.wait_for(relay, 10)
    await proxy.aclose()
    assert headers["x-forwarded-host"] == [_host(port).decode()]
    assert headers["x-forwarded-for"] == ["10.9.8.7"]
    assert "proxy-authorization" not in headers
