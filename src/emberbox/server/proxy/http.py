"""Plain HTTP forwarding with streaming in both directions and no buffering.

Response bytes are passed on raw (no decompression) as they arrive, each chunk its own ASGI
message, so Connect streams and keepalives reach the SDK when envd sends them. A client that
goes away closes the upstream request, which envd notices like any disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.types import Message, Receive, Scope, Send

from .responses import port_not_open, send_json

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)


def upstream_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
    client = scope.get("client")
    if client:
        headers.append((b"x-forwarded-for", client[0].encode()))
    for k, v in scope["headers"]:
        if k == b"host":
            headers.append((b"x-forwarded-host", v))
    return headers


def upstream_url(scope: Scope, host: str, port: int, ws: bool = False) -> str:
    path = scope.get("raw_path") or scope["path"].encode()
    if isinstance(path, bytes):
        path = path.decode("latin-1")
    qs = scope.get("query_string", b"").decode("latin-1")
    scheme = "ws" if ws else "http"
    return f"{scheme}://{host}:{port}{path}" + (f"?{qs}" if qs else "")


async def _first_and_rest(receive: Receive) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """Read the first body message; a single-message body is sent with a Content-Length."""
    first = await receive()
    if first["type"] != "http.request":
        return b"", None
    body = first.get("body", b"")
    if not first.get("more_body", False):
        return body, None

    async def rest() -> AsyncIterator[bytes]:
        if body:
            yield body
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            if msg.get("body"):
                yield msg["body"]
            if not msg.get("more_body", False):
                return

    return b"", rest()


async def forward_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    client: httpx.AsyncClient,
    address: tuple[str, int],
    sandbox_id: str,
    port: int,
) -> None:
    body, stream = await _first_and_rest(receive)
    request = client.build_request(
        scope["method"],
        upstream_url(scope, *address),
        headers=upstream_headers(scope),
        content=stream if stream is not None else body,
    )
    if stream is not None:  # httpx would add its own framing; keep exactly one
        request.headers.pop("content-length", None)
        request.headers["transfer-encoding"] = "chunked"
    try:
        response = await client.send(request, stream=True)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        await send_json(send, 502, port_not_open(sandbox_id, port))
        return
    except httpx.TransportError:
        await send_json(send, 502, port_not_open(sandbox_id, port))
        return
    try:
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP],
            }
        )
        pump = asyncio.create_task(_pump(response, send))
        gone = asyncio.create_task(_wait_disconnect(receive))
        done, _ = await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        for t in (pump, gone):
            if t not in done:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        if pump in done:
            pump.result()
    finally:
        await response.aclose()


async def _pump(response: httpx.Response, send: Send) -> None:
    try:
        async for chunk in response.aiter_raw():
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.TransportError:
        pass  # upstream died mid-stream: end our response; the client sees a short stream
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
