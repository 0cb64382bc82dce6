"""A thin Connect-protocol server (JSON codec) as a plain ASGI app.

Why not a library: the PyPI ``connectrpc`` server is built on the ``protobuf-py`` runtime and
its own code generator, while we generate with protoc and must map JSON through
``json_format``; and envd needs exact control of stream framing (keepalives between messages,
deadlines, a process that outlives its disconnected client). The surface we need is small:
unary, server-stream and client-stream calls over HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from .._connect.codec import decode_json, encode_json
from .._connect.envelope import (
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    EnvelopeDecoder,
    EnvelopeError,
    encode_envelope,
)
from .._connect.errors import Code, ConnectError
from ..vocabulary import whole_number

log = logging.getLogger("emberbox.envd.rpc")
PUMP_AHEAD = 16  # messages of a stream taken from its handler and not yet sent
# The most a stream's client can leave unsent when it goes: a batch being written, and what
# its handler gave meanwhile (``RpcContext.give_back``).
MAX_UNSENT = 2 * PUMP_AHEAD + 2

DEFAULT_KEEPALIVE_S = 90.0
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_STREAM_CT = "application/connect+json"


class Kind(enum.Enum):
    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    CLIENT_STREAM = "client_stream"


@dataclass
class RpcContext:
    """What a handler may know about its call besides the request message."""

    headers: Headers
    deadline: float | None  # event-loop time, None when the client set no timeout
    keepalive_interval: float
    # Set by a stream's handler: called, when the client went away or the deadline came with
    # a write still waiting for room, with how many of the last messages the handler yielded
    # never reached it, so it can keep them for the next caller (a process's output, for the
    # next Connect). Called before the handler is closed, or after it ended: its last
    # messages are written after it, before the end frame.
    give_back: Callable[[int], None] | None = None

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()


UnaryHandler = Callable[[Any, RpcContext], Awaitable[Message]]
StreamHandler = Callable[[Any, RpcContext], AsyncIterator[Message]]
ClientStreamHandler = Callable[[AsyncIterator[Any], RpcContext], Awaitable[Message]]


@dataclass(frozen=True)
class RpcMethod:
    kind: Kind
    request_type: type[Message]
    handler: Callable[..., Any]
    keepalive: Callable[[], Message] | None = None


class _Disconnected:
    pass


class _Finished:
    pass


_DISCONNECTED = _Disconnected()
_FINISHED = _Finished()
_End = BaseException | _Disconnected | _Finished  # what ends a stream's queue of messages


async def _send_body(send: Send, status: int, content_type: str, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, err: ConnectError) -> None:
    await _send_body(send, err.http_status, "application/json", err.to_json())


async def _read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectError(Code.CANCELED, "client disconnected")
        body += message.get("body", b"")
        if len(body) > limit:
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED, f"request message exceeds the {limit} byte limit"
            )
        if not message.get("more_body", False):
            return bytes(body)


def _deadline(headers: Headers) -> float | None:
    raw = headers.get("connect-timeout-ms")
    if raw is None:
        return None
    ms = whole_number(raw, 10)
    if ms is None:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid Connect-Timeout-Ms: {raw!r}")
    return asyncio.get_running_loop().time() + ms / 1000


def _keepalive(headers: Headers) -> float:
    raw = headers.get("keepalive-ping-interval")
    try:
        value = float(raw) if raw is not None else DEFAULT_KEEPALIVE_S
    except ValueError:
        value = DEFAULT_KEEPALIVE_S
    return value if value > 0 else DEFAULT_KEEPALIVE_S


def _ready_messages(
    first: Message | _End | None, queue: asyncio.Queue[Message | _End]
) -> tuple[bytes, int, _End | None]:
    """``first`` and the messages queued after it, as envelopes, how many, and the first
    thing taken that is not a message (the stream's end, or its client gone), if any."""
    out, count = bytearray(), 0
    item = first
    while isinstance(item, Message):
        out += encode_envelope(encode_json(item))
        count += 1
        if queue.empty():
            return bytes(out), count, None
        item = queue.get_nowait()
    return bytes(out), count, item


def _end_stream(err: ConnectError | None) -> bytes:
    payload = json.dumps({"error": err.to_dict()} if err else {}).encode()
    return encode_envelope(payload, FLAG_END_STREAM)


class ConnectApp:
    """Routes ``/<package>.<Service>/<Method>`` to handlers; everything else is not ours."""

    def __init__(self, methods: dict[str, RpcMethod], max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.methods = methods
        self.max_message_bytes = max_message_bytes

    def handles(self, path: str) -> bool:
        return path in self.methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = self.methods[scope["path"]]
        headers = Headers(scope=scope)
        if scope["method"] != "POST":
            await _send_body(
                send,
                405,
                "application/json",
                ConnectError(Code.UNIMPLEMENTED, "Connect RPCs must be POSTed").to_json(),
            )
            return
        if method.kind is Kind.UNARY:
            await self._unary(method, headers, receive, send)
            return
        if not headers.get("content-type", "").startswith(_STREAM_CT):
            err = ConnectError(Code.UNIMPLEMENTED, f"streams need content-type {_STREAM_CT}")
            await _send_body(send, 415, "application/json", err.to_json())
            return
        if method.kind is Kind.SERVER_STREAM:
            await self._server_stream(method, headers, receive, send)
        else:
            await self._client_stream(method, headers, receive, send)

    async def _unary(
        self, method: RpcMethod, headers: Headers, receive: Receive, send: Send
    ) -> None:
        content_type = headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            err = ConnectError(Code.UNIMPLEMENTED, f"unsupported content-type {content_type!r}")
            await _send_body(send, 415, "application/json", err.to_json())
            return
        try:
            encoding = headers.get("content-encoding", "identity")
            if encoding != "identity":
                raise ConnectError(Code.UNIMPLEMENTED, f"unsupported encoding {encoding!r}")
            ctx = RpcContext(headers, _deadline(headers), _keepalive(headers))
            request = decode_json(
                await _read_body(receive, self.max_message_bytes), method.request_type
            )
            async with asyncio.timeout_at(ctx.deadline):
                response = await method.handler(request, ctx)
        except ConnectError as err:
            await _send_error(send, err)
            return
        except TimeoutError:
            await _send_error(send, ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded"))
            return
        except Exception as exc:
            log.exception("unary handler failed")
            await _send_error(send, ConnectError(Code.INTERNAL, str(exc) or type(exc).__name__))
            return
        await _send_body(send, 200, "application/json", encode_json(response))

    async def _read_stream_request(self, method: RpcMethod, receive: Receive) -> Message:
        body = await _read_body(receive, self.max_message_bytes + 5)
        try:
            envelopes = EnvelopeDecoder(self.max_message_bytes).feed(body)
        except EnvelopeError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from exc
        messages = [payload for flags, payload in envelopes if not flags & FLAG_END_STREAM]
        if any(flags & FLAG_COMPRESSED for flags, _ in envelopes):
            raise ConnectError(Code.UNIMPLEMENTED, "compressed messages are not supported")
        if len(messages) != 1:
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"expected one request message, got {len(messages)}"
            )
        return decode_json(messages[0], method.request_type)

    async def _server_stream(
        self, method: RpcMethod, headers: Headers, receive: Receive, send: Send
    ) -> None:
        # Read the whole request before answering: some clients stop sending their body once
        # response headers arrive, which would leave us with an empty request.
        error: ConnectError | None = None
        request: Message | None = None
        try:
            ctx = RpcContext(headers, _deadline(headers), _keepalive(headers))
            request = await self._read_stream_request(method, receive)
        except ConnectError as err:
            error = err
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", _STREAM_CT.encode())],
            }
        )
        if request is None:
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": _end_stream(error)})
            return
        with contextlib.suppress(OSError):  # (the client went away: nobody is left to tell)
            await self._pump(method, method.handler(request, ctx), ctx, receive, send)

    async def _pump(
        self,
        method: RpcMethod,
        stream: AsyncIterator[Message],
        ctx: RpcContext,
        receive: Receive,
        send: Send,
    ) -> None:
        """Forward handler messages as envelopes, interleaving keepalives, until done or gone.

        Messages that are ready together leave in one write. The deadline bounds writing
        too: a client that stops reading holds its connection past it, never the handler.
        """
        queue: asyncio.Queue[Message | _End] = asyncio.Queue()
        taken = sent = 0  # messages the handler yielded; those written to the client
        # At most PUMP_AHEAD messages taken from the handler and not yet sent: a client that
        # reads slowly leaves the rest where the handler keeps it (a process's output stays
        # in its queue, and goes back to its backlog for the next Connect if the client
        # leaves), instead of growing here without bound and being dropped with the stream.
        room = asyncio.Semaphore(PUMP_AHEAD)

        async def produce() -> None:
            nonlocal taken
            try:
                async for item in stream:
                    taken += 1
                    queue.put_nowait(item)  # (before the wait: never held here, unsent)
                    await room.acquire()
                queue.put_nowait(_FINISHED)
            except BaseException as exc:  # handed to the consumer, which decides
                queue.put_nowait(exc)

        gone = asyncio.Event()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            queue.put_nowait(_DISCONNECTED)

        async def write(body: bytes, count: int) -> None:
            nonlocal sent
            if not body:
                return
            # Bounded by the deadline (``TimeoutError``): uvicorn waits for room before it
            # writes anything, so a send cut there wrote nothing, and its messages are the
            # handler's again; one that finds room writes at once, even past the deadline.
            async with asyncio.timeout_at(ctx.deadline):
                await send({"type": "http.response.body", "body": body, "more_body": True})
            # uvicorn does not raise for a client gone: a write waiting for room when it
            # left, or made after, returns as if written; so does one made while asyncio
            # carries the disconnect to the app, which takes three turns of the loop (the
            # transport reads the FIN or RST the poll found, runs after what was already
            # scheduled, this write perhaps; then ``call_soon(_call_connection_lost)``; then
            # the receive's wake-up). Three turns later ``gone`` says whether it came first.
            for _ in range(3):
                await asyncio.sleep(0)
            if gone.is_set():
                raise OSError("client disconnected")
            sent += count

        loop = asyncio.get_running_loop()

        async def relay() -> ConnectError | None:
            """Forward what the handler gives until it ends; what the stream ends with."""
            while True:
                wake = loop.time() + ctx.keepalive_interval
                if ctx.deadline is not None:
                    wake = min(wake, ctx.deadline)
                try:
                    async with asyncio.timeout_at(wake):
                        item = await queue.get()
                except TimeoutError:
                    if ctx.deadline is not None and loop.time() >= ctx.deadline:
                        # (a message can arrive as the wait is cut: it is the client's too)
                        late = queue.get_nowait() if queue.qsize() else None
                        await write(*_ready_messages(late, queue)[:2])
                        return ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
                    if method.keepalive is not None:
                        await write(encode_envelope(encode_json(method.keepalive())), 0)
                    continue
                if ctx.deadline is not None and loop.time() >= ctx.deadline:
                    # What the handler gave is still the client's: sent before the end.
                    await write(*_ready_messages(item, queue)[:2])
                    return ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
                batch, count, end = _ready_messages(item, queue)
                for _ in range(count):
                    room.release()
                if end is not None:
                    outcome = self._outcome(end)  # (raises first for a client gone)
                    await write(batch, count)
                    return outcome
                await write(batch, count)

        async def release() -> None:
            """Let go of the handler, once: what the client never got is the handler's
            again (it left, a write outlived the deadline, or the deadline's end went out
            while the handler gave more), before anything else runs: the handler, closed
            here, must not let go of its process first."""
            try:
                if ctx.give_back is not None and taken > sent:
                    ctx.give_back(taken - sent)
            finally:
                ctx.give_back = None  # (once: a second call would give the same twice)
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*tasks, return_exceptions=True)
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(BaseException):
                        await aclose()

        tasks = [asyncio.create_task(produce()), asyncio.create_task(watch_disconnect())]
        try:
            try:
                error = await relay()
            except TimeoutError:
                error = ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
            # The end frame on its own, after the handler is let go: a client that does not
            # read it holds a connection, not the process; and once the response is complete
            # uvicorn tells the receive "disconnect" too, so only what comes before it can be
            # known to have reached the client.
            await release()
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # (``release`` swallows it)
                raise asyncio.CancelledError
            await send({"type": "http.response.body", "body": _end_stream(error)})
        finally:
            await release()

    @staticmethod
    def _outcome(item: _End) -> ConnectError | None:
        """What ends a stream: success, a handler's error, or a client that left (raised)."""
        if isinstance(item, _Finished):
            return None
        if isinstance(item, _Disconnected):
            raise OSError("client disconnected")
        if isinstance(item, ConnectError):
            return item
        if isinstance(item, asyncio.CancelledError):
            return ConnectError(Code.CANCELED, "canceled")
        log.error("stream handler failed", exc_info=item)
        return ConnectError(Code.INTERNAL, str(item) or type(item).__name__)

    async def _client_stream(
        self, method: RpcMethod, headers: Headers, receive: Receive, send: Send
    ) -> None:
        decoder = EnvelopeDecoder(self.max_message_bytes)

        async def messages() -> AsyncIterator[Message]:
            while True:
                event = await receive()
                if event["type"] == "http.disconnect":
                    return
                try:
                    envelopes = decoder.feed(event.get("body", b""))
                except EnvelopeError as exc:
                    raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from exc
                for flags, payload in envelopes:
                    if flags & FLAG_END_STREAM:
                        return
                    yield decode_json(payload, method.request_type)
                if not event.get("more_body", False):
                    return

        response: Message | None = None
        error: ConnectError | None = None
        try:
            ctx = RpcContext(headers, _deadline(headers), _keepalive(headers))
            async with asyncio.timeout_at(ctx.deadline):
                response = await method.handler(messages(), ctx)
        except ConnectError as err:
            error = err
        except TimeoutError:
            error = ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
        except Exception as exc:
            log.exception("client-stream handler failed")
            error = ConnectError(Code.INTERNAL, str(exc) or type(exc).__name__)
        body = b""
        if response is not None:
            body += encode_envelope(encode_json(response))
        body += _end_stream(error)
        await _send_body(send, 200, _STREAM_CT, body)
