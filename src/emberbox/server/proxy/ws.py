"""WebSocket forwarding: open upstream first (so failures can still answer 502), then pump.

An upstream that drops without a closing handshake drops the client too (it sees 1006, as if it
were connected directly); a close frame of 1011 would claim a clean close that never happened.
The proxy closes a relay itself (``GOING_AWAY``) when the sandbox is paused or killed: its
client then reconnects (waking a sandbox that traffic wakes) rather than wait on a socket
saved in a checkpoint, or on one gone. Such a client is told 1001 however its upstream
ended (dropped as it would not take the close), unless the sandbox had closed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .http import stop, target_of, upstream_headers, upstream_url
from .responses import port_not_open, send_json

log = logging.getLogger("emberbox.server.proxy")
NO_UPGRADE = "The sandbox's server did not accept the WebSocket upgrade"
GOING_AWAY = 1001  # RFC 6455: the server is going away
CLOSE_TIMEOUT_S = 2.0  # a closing handshake the sandbox does not answer in this is dropped
DRAIN_TIMEOUT_S = 10.0  # for a client to take the messages a sandbox sent before its close
# Besides the hop-by-hop ones: what the WebSocket client library sends itself.
_SKIP = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"content-length",
    }
)


@dataclass(eq=False)
class Relay:
    """One WebSocket relay, known to the proxy from before its upstream connects: closed
    (``going_away``) while it connects, it closes its upstream as soon as it has one."""

    upstream: ClientConnection | None = None
    closed: bool = False

    async def going_away(self) -> None:
        """Close the upstream (1001), within ``CLOSE_TIMEOUT_S`` whatever it does: a close
        frame that cannot be written (a sandbox that stopped reading) drops the connection."""
        self.closed = True
        if (upstream := self.upstream) is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await upstream.close(GOING_AWAY, "the sandbox is pausing or gone")
        except TimeoutError:
            upstream.transport.abort()


async def deny(scope: Scope, send: Send, status: int, body: dict[str, object]) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await send_json(send, status, body, websocket=True)
    else:
        await send({"type": "websocket.close", "code": 1011})


async def _relay_refusal(
    scope: Scope, send: Send, status: int, body: bytes, content_type: str
) -> None:
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1011})
        return
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


async def forward_ws(
    scope: Scope,
    receive: Receive,
    send: Send,
    address: tuple[str, int],
    sandbox_id: str,
    port: int,
    host: str | None = None,
    tracked: Callable[[], contextlib.AbstractContextManager[Relay]] | None = None,
) -> None:
    """Relay one WebSocket; ``host`` replaces the Host header (maskRequestHost): it names the
    URI, while the connection still goes to ``address``. ``tracked`` holds the relay, for
    the proxy to close, from before its upstream connects to its end."""
    if (await receive())["type"] != "websocket.connect":
        return
    with tracked() if tracked else contextlib.nullcontext(Relay()) as relay:
        try:
            upstream = await _open(scope, address, host)
        except InvalidStatus as e:  # the sandbox's server said no: pass its answer on
            await _relay_refusal(
                scope,
                send,
                e.response.status_code,
                bytes(e.response.body or b""),
                e.response.headers.get("content-type", "text/plain"),
            )
            return
        except OSError:
            await deny(scope, send, 502, port_not_open(sandbox_id, port))
            return
        except (InvalidHandshake, TimeoutError) as e:
            body = {"sandboxId": sandbox_id, "message": f"{NO_UPGRADE}: {e}", "port": port}
            await deny(scope, send, 502, {**body, "code": 502})
            return
        async with upstream:
            relay.upstream = upstream
            if relay.closed:  # (closed while it connected: at once)
                await relay.going_away()
            await _relay(receive, send, upstream, relay)


async def _open(scope: Scope, address: tuple[str, int], host: str | None) -> ClientConnection:
    """The upstream WebSocket, at ``address``, for the URI the client asked for."""
    headers = [
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream_headers(scope, skip=_SKIP)
    ]
    uri = upstream_url(scope, *address, ws=True)
    if host is not None:
        uri = f"ws://{host}{target_of(scope)}"
    return await connect(
        uri,
        host=address[0],
        port=address[1],
        additional_headers=headers,
        subprotocols=scope.get("subprotocols") or None,
        open_timeout=10,
        close_timeout=CLOSE_TIMEOUT_S,
        max_size=None,
        compression=None,
    )


async def _relay(receive: Receive, send: Send, upstream: ClientConnection, relay: Relay) -> None:
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
    up = asyncio.create_task(_client_to_upstream(receive, upstream))
    down = asyncio.create_task(_upstream_to_client(upstream, send, relay))
    await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
    if up.done() and not up.cancelled() and up.exception() is None and not up.result():
        # The upstream had closed as the client sent it something: what it sent before its
        # close, and the close, still go on to the client (within reason: it may not read).
        await asyncio.wait({down}, timeout=DRAIN_TIMEOUT_S)
    for t in (up, down):
        await stop(t)
    told = False  # (whether the down task sent its client a close)
    if down.done() and not down.cancelled():
        if (failed := down.exception()) is None:
            told = down.result()
        elif not isinstance(failed, OSError):  # (a client gone is no news)
            log.warning("websocket relay to the client failed", exc_info=failed)
    if relay.closed and not told:
        # The proxy closed it: its client hears "going away" however the upstream ended
        # (dropped as its close frame could not be written, or a write to it failing first),
        # not a connection dropped as the app returns.
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": GOING_AWAY})


async def _client_to_upstream(receive: Receive, upstream: ClientConnection) -> bool:
    """Forward until the client leaves (True) or the upstream is closed to its sends (False:
    the other direction then passes on what came before its close)."""
    while True:
        msg = await receive()
        try:
            if msg["type"] == "websocket.receive":
                if msg.get("bytes") is not None:
                    await upstream.send(msg["bytes"])
                elif msg.get("text") is not None:
                    await upstream.send(msg["text"])
            elif msg["type"] == "websocket.disconnect":
                # 1005/1006 name a missing status or a lost connection; no frame may carry them.
                code = msg.get("code") or 1000
                await upstream.close(code=1000 if code in (1005, 1006) else code)
                return True
        except ConnectionClosed:
            return False


async def _upstream_to_client(upstream: ClientConnection, send: Send, relay: Relay) -> bool:
    """Forward until the upstream ends; whether a close to the client was tried."""
    try:
        async for data in upstream:
            if isinstance(data, bytes):
                await send({"type": "websocket.send", "bytes": data})
            else:
                await send({"type": "websocket.send", "text": data})
        code = upstream.close_code or 1000
        theirs = upstream.protocol.close_rcvd_then_sent is True
    except ConnectionClosed as e:
        if e.rcvd is None and not relay.closed:
            return False  # no closing handshake: none to the client, so uvicorn drops it
        code = e.rcvd.code if e.rcvd is not None else GOING_AWAY
        theirs = e.rcvd_then_sent is True
    if relay.closed and not theirs:  # (the sandbox's own close, come first, keeps its code)
        code = GOING_AWAY
    if code in (1005, 1006):
        code = 1000
    with contextlib.suppress(Exception):
        await send({"type": "websocket.close", "code": code})
    return True
