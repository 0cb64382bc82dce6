"""Plain HTTP forwarding with streaming in both directions and no buffering.

Response bytes are passed on raw (no decompression) as they arrive, each chunk its own ASGI
message, so Connect streams and keepalives reach the SDK when envd sends them. A client that
goes away closes the upstream request, which envd notices like any disconnect.

Failures are passed on as what they are, not as a closed port:

* A pooled keep-alive connection can be dead before it is used: the upstream closed it while it
  sat idle, or a previous response left unread bytes on it. When a request fails on a *reused*
  connection before its response headers arrived and its body was buffered, it is sent once more
  on a fresh connection, as Go's HTTP transport does: only if it did not reach the upstream
  whole, or is one a server may get twice (GET, HEAD, OPTIONS, TRACE, or one carrying an
  ``Idempotency-Key``). Any other may have been acted on (envd's calls are all POSTs: input
  written twice, a move that then fails): it answers 502. Only a fresh connection that cannot
  be opened answers 502 "port is not open".
* An upstream that breaks mid-response breaks the client's connection too. Ending the response
  cleanly would tell a Connect client that the stream ended without its end message ("missing
  EndStreamResponse"); a broken connection makes the SDKs probe the sandbox and report it killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextvars import ContextVar
from typing import Any

import httpx
from starlette.types import Message, Receive, Scope, Send

from ...envd_client.http import sandbox_http
from .responses import port_not_open, send_json, upstream_failed

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

# uvicorn closes the connection when an app returns mid-response, which is the only way ASGI has
# to abort one, and logs it as an error. The flag marks the responses the proxy cut on purpose.
_ABORTED: ContextVar[bool] = ContextVar("emberbox_proxy_aborted", default=False)
_UNFINISHED = "ASGI callable returned without completing response."


class _QuietDeliberateAborts(logging.Filter):
    """Drop uvicorn's "without completing response" line for the proxy's own aborts, only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_ABORTED.get() and record.msg == _UNFINISHED)


def quiet_deliberate_aborts() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDeliberateAborts) for f in logger.filters):
        logger.addFilter(_QuietDeliberateAborts())


# An idle pooled connection is closed after this, before the servers users run close theirs
# (Node's and uvicorn's 5 s): a request sent on one just as its server closes it is lost, and
# only a request a server may get twice is sent again.
UPSTREAM_KEEPALIVE_S = 4.0


def upstream_client(*, pooled: bool = True) -> httpx.AsyncClient:
    """A client for one sandbox. No read timeout: process streams stay open as long as the
    process runs. An unpooled client keeps no connection, so its request gets a fresh one."""
    if pooled:  # no cap: a cap reached (long streams, hung requests) would hang every port
        limits = httpx.Limits(
            max_connections=None,
            max_keepalive_connections=20,
            keepalive_expiry=UPSTREAM_KEEPALIVE_S,
        )
    else:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=0)
    client = sandbox_http(
        timeout=httpx.Timeout(None, connect=5.0), limits=limits, follow_redirects=False
    )
    # None of httpx's own: a request that had no Accept-Encoding got "gzip, deflate" (and its
    # answer compressed, passed on raw to a client that never asked), and httpx's User-Agent.
    client.headers.clear()
    return client


def upstream_headers(
    scope: Scope, skip: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """The request's headers as the sandbox gets them: without hop-by-hop ones (those its
    ``Connection`` names too) or ``skip``; with ``X-Forwarded-For`` (the client appended to
    what a proxy before us said) and ``X-Forwarded-Host``, the Host it arrived with, set here
    only (a client's own would be taken for the original host, maskRequestHost's users read
    it there)."""
    named = {
        token.strip().lower().encode("latin-1")
        for k, v in scope["headers"]
        if k.lower() == b"connection"
        for token in v.decode("latin-1").split(",")
    }
    dropped = HOP_BY_HOP | named | skip | {b"x-forwarded-host", b"x-forwarded-for"}
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in dropped]
    chain = [v for k, v in scope["headers"] if k.lower() == b"x-forwarded-for"]
    client = scope.get("client")
    if client:
        chain.append(client[0].encode())
    if chain:
        headers.append((b"x-forwarded-for", b", ".join(chain)))
    for k, v in scope["headers"]:
        if k == b"host":
            headers.append((b"x-forwarded-host", v))
    return headers


def upstream_url(scope: Scope, host: str, port: int, ws: bool = False) -> str:
    return f"{'ws' if ws else 'http'}://{host}:{port}{target_of(scope)}"


def target_of(scope: Scope) -> str:
    """The request's path and query string, exactly as the client sent them."""
    raw = scope.get("raw_path") or scope["path"].encode()
    path: str = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    qs = scope.get("query_string", b"").decode("latin-1")
    return path + (f"?{qs}" if qs else "")


class _ClientGone(Exception):
    """The client went away before its request was whole, or before it was answered."""


class _Body:
    """The request body as it arrives; ``whole`` is set once the client has sent all of it.

    A client that leaves mid-body must not look like a body that ended: sent on in chunks,
    the request would reach the sandbox complete (a cut-off upload stored as a short file)."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.whole = asyncio.Event()

    async def first_and_rest(self) -> tuple[bytes, AsyncIterator[bytes] | None]:
        """Read the first body message; a single-message body is sent with a Content-Length."""
        first = await self.receive()
        if first["type"] != "http.request":
            raise _ClientGone
        body = first.get("body", b"")
        if not first.get("more_body", False):
            self.whole.set()
            return body, None

        async def rest() -> AsyncIterator[bytes]:
            if body:
                yield body
            while True:
                msg = await self.receive()
                if msg["type"] != "http.request":
                    raise _ClientGone  # (httpx then drops the upstream connection)
                if msg.get("body"):
                    yield msg["body"]
                if not msg.get("more_body", False):
                    self.whole.set()
                    return

        return b"", rest()

    async def client_gone(self) -> None:
        """Returns when the client disconnects, watching once its body is whole (until then
        the body's reader sees a disconnect)."""
        await self.whole.wait()
        while True:
            message: Message = await self.receive()
            if message["type"] == "http.disconnect":
                return


REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
IDEMPOTENCY_HEADERS = (b"idempotency-key", b"x-idempotency-key")


def _replayable(scope: Scope) -> bool:
    """Whether a server may get the request twice (Go's ``isReplayable``)."""
    if scope["method"] in REPLAYABLE_METHODS:
        return True
    return any(k.lower() in IDEMPOTENCY_HEADERS for k, _ in scope["headers"])


class _SendFailed(Exception):
    """A request that got no response; ``reused`` if it went out on a pooled connection,
    ``written`` if all of it reached the upstream (which may have acted on it)."""

    def __init__(self, cause: Exception, reused: bool, written: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.reused = reused
        self.written = written

    def answer(self, sandbox_id: str, port: int) -> dict[str, Any]:
        if isinstance(self.cause, (httpx.ConnectError, httpx.ConnectTimeout)):
            return port_not_open(sandbox_id, port)
        return upstream_failed(sandbox_id, port)


async def _send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send and return once headers arrive. httpcore's ``trace`` extension reports every new
    connection, so no ``connect_tcp`` event means the pool handed out a reused one, and the
    end of the request's body on the wire."""
    dialed = written = False

    async def trace(event: str, info: dict[str, Any]) -> None:
        nonlocal dialed, written
        if event.startswith("connection.connect_tcp."):
            dialed = True
        elif event == "http11.send_request_body.complete":
            written = True

    request.extensions["trace"] = trace
    try:
        return await client.send(request, stream=True)
    except httpx.TransportError as e:
        if client.is_closed:  # (closed under it on purpose, as below: a read cut, say)
            raise _SendFailed(e, reused=False, written=True) from e
        raise _SendFailed(e, reused=not dialed, written=written) from e
    except RuntimeError as e:  # the pool was closed under it (a kill, or before a checkpoint)
        if not client.is_closed:
            raise
        # Not sent again: a connection opened to a sandbox being paused would be saved in
        # its checkpoint (and restored into its forks).
        raise _SendFailed(e, reused=False, written=False) from e


async def forward_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    client: httpx.AsyncClient,
    address: tuple[str, int],
    sandbox_id: str,
    port: int,
    host: str | None = None,
    one_off: Callable[[], httpx.AsyncClient] | None = None,
) -> None:
    """Forward one request; ``host`` replaces the Host header (maskRequestHost). A request
    sent again goes on a connection of its own, from ``one_off``."""
    incoming = _Body(receive)
    try:
        body, stream = await incoming.first_and_rest()
    except _ClientGone:
        return
    headers = upstream_headers(scope)
    if host is not None:
        headers.append((b"host", host.encode("latin-1")))

    def build(via: httpx.AsyncClient) -> httpx.Request:
        request = via.build_request(
            scope["method"],
            upstream_url(scope, *address),
            headers=headers,
            content=stream if stream is not None else body,
        )
        # (A streamed body keeps the client's Content-Length, which h11 then frames it by:
        # servers that read exactly that many bytes need it. Without one httpx sends it
        # chunked.)
        return request

    fresh: httpx.AsyncClient | None = None
    gone = asyncio.create_task(incoming.client_gone())
    try:
        try:
            response = await _unless_gone(_send(client, build(client)), gone)
        except _SendFailed as stale:
            if not stale.reused or stream is not None:  # a streamed body cannot be replayed
                raise
            if stale.written and not _replayable(scope):
                raise
            fresh = one_off() if one_off else upstream_client(pooled=False)
            response = await _unless_gone(_send(fresh, build(fresh)), gone)
        try:
            await _relay(response, gone, send)
        finally:
            await response.aclose()
    except _SendFailed as failed:
        await send_json(send, 502, failed.answer(sandbox_id, port))
    except _ClientGone:
        pass  # nobody to answer; the upstream request was dropped with it
    finally:
        await stop(gone)
        if fresh is not None:
            await fresh.aclose()


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` unless it is done, and wait for it, whatever it ends with: the other
    half of a relay (or a wait) the first half to end has made pointless."""
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _unless_gone(
    sending: Coroutine[Any, Any, httpx.Response], gone: asyncio.Task[None]
) -> httpx.Response:
    """The upstream's response once its headers arrive; _ClientGone if the client left first
    (its upstream request is then cancelled: a request nobody waits for holds no connection
    to the sandbox for as long as its server takes)."""
    task = asyncio.create_task(sending)
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    await stop(task)
    raise _ClientGone


async def _relay(response: httpx.Response, gone: asyncio.Task[None], send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP],
        }
    )
    pump = asyncio.create_task(_pump(response, send))
    done, _ = await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
    await stop(pump)
    if pump in done and not pump.result():
        _ABORTED.set(True)  # return unfinished: uvicorn closes the client's connection


async def _pump(response: httpx.Response, send: Send) -> bool:
    """Copy the body as it comes; False if the upstream broke before the body's end."""
    try:
        async for chunk in response.aiter_raw():
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.TransportError:
        return False
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True
