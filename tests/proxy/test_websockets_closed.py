"""A WebSocket relayed to a sandbox's port is closed (1001, going away) when the sandbox is
paused or killed: its client reconnects (waking a sandbox traffic wakes) instead of waiting on
a socket saved in a checkpoint, or gone. Over a WebSocket server on loopback; no sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from starlette.types import Message
from websockets.asyncio.server import ServerConnection, serve

from emberbox.server.proxy import ws
from emberbox.server.proxy.app import SandboxProxy

from .loopback import OnLoopback

SANDBOX = "wssandbox00000000000"


def _scope(port: int) -> dict[str, Any]:
    """A client's WebSocket to the sandbox's ``port``, as the proxy gets it."""
    return {
        "type": "websocket",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [
            (b"host", b"localhost"),
            (b"e2b-sandbox-id", SANDBOX.encode()),
            (b"e2b-sandbox-port", str(port).encode()),
        ],
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }


@pytest.mark.parametrize("how", ["pause", "kill"])
async def test_a_relayed_websocket_is_closed_going_away_with_the_sandboxs_connections(
    how: str,
) -> None:
    upstream_closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        await ws.send("hello")
        await ws.wait_closed()
        upstream_closed.set_result(ws.close_code)

    proxy = SandboxProxy(OnLoopback())  # type: ignore[arg-type]
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        to_proxy: asyncio.Queue[Message] = asyncio.Queue()
        from_proxy: asyncio.Queue[Message] = asyncio.Queue()
        scope = _scope(port)
        await to_proxy.put({"type": "websocket.connect"})
        receive: Callable[[], Awaitable[Message]] = to_proxy.get
        relay = asyncio.create_task(proxy(scope, receive, from_proxy.put))
        assert (await from_proxy.get())["type"] == "websocket.accept"
        assert (await from_proxy.get())["text"] == "hello"

        if how == "pause":  # before its checkpoint
            await proxy.close_connections(SANDBOX)
        else:  # the resolver forgets a sandbox killed
            proxy.drop_client(SANDBOX)
        closed = await asyncio.wait_for(from_proxy.get(), 5)
        assert closed == {"type": "websocket.close", "code": 1001}
        assert await asyncio.wait_for(upstream_closed, 5) == 1001
        await asyncio.wait_for(relay, 5)
    await proxy.aclose()


async def test_closing_a_websocket_whose_sandbox_stopped_reading_takes_seconds_not_ever() -> None:
    """Its close frame cannot be written (the sandbox's app reads nothing, the client sends
    on): the connection is dropped after ``CLOSE_TIMEOUT_S``, or the pause waiting for it
    would wait for ever, its sandbox stuck pausing."""
    stop = asyncio.Event()

    async def deaf(_: ServerConnection) -> None:
        await stop.wait()

    proxy = SandboxProxy(OnLoopback())  # type: ignore[arg-type]
    # (its side of the dropped connection, still paused reading, closes without waiting)
    async with serve(deaf, "127.0.0.1", 0, max_queue=1, close_timeout=0.1) as server:
        try:
            port = server.sockets[0].getsockname()[1]
            to_proxy: asyncio.Queue[Message] = asyncio.Queue()
            from_proxy: asyncio.Queue[Message] = asyncio.Queue()
            await to_proxy.put({"type": "websocket.connect"})
            relay = asyncio.create_task(proxy(_scope(port), to_proxy.get, from_proxy.put))
            assert (await from_proxy.get())["type"] == "websocket.accept"
            for _ in range(100):  # 6.5 MB: more than the socket buffers between them hold
                await to_proxy.put({"type": "websocket.receive", "bytes": b"x" * 65536})
            left = -1
            while to_proxy.qsize() != left:  # until the relay is stuck writing
                left = to_proxy.qsize()
                await asyncio.sleep(0.5)
            assert left > 0, "the sandbox read it all: nothing to show"
            await asyncio.wait_for(proxy.close_connections(SANDBOX), ws.CLOSE_TIMEOUT_S + 8)
            # Its client still hears why: going away (not a connection uvicorn drops).
            closed = await asyncio.wait_for(from_proxy.get(), 5)
            assert closed == {"type": "websocket.close", "code": 1001}
            await to_proxy.put({"type": "websocket.disconnect", "code": 1000})
            await asyncio.wait_for(relay, 5)
        finally:
            stop.set()  # (else the server waits on its handler for ever)
    await proxy.aclose()


async def test_a_websocket_still_connecting_as_its_sandbox_pauses_is_closed_once_connected() -> (
    None
):
    """Its upstream connects while the checkpoint is taken: it would be saved in it."""
    connecting = asyncio.Event()

    async def slow_handshake(_: ServerConnection, __: Any) -> None:
        connecting.set()
        await asyncio.sleep(0.3)

    async def handler(conn: ServerConnection) -> None:
        await conn.wait_closed()

    proxy = SandboxProxy(OnLoopback())  # type: ignore[arg-type]
    async with serve(handler, "127.0.0.1", 0, process_request=slow_handshake) as server:
        port = server.sockets[0].getsockname()[1]
        to_proxy: asyncio.Queue[Message] = asyncio.Queue()
        from_proxy: asyncio.Queue[Message] = asyncio.Queue()
        await to_proxy.put({"type": "websocket.connect"})
        relay = asyncio.create_task(proxy(_scope(port), to_proxy.get, from_proxy.put))
        await connecting.wait()
        await proxy.close_connections(SANDBOX)  # before its upstream is there
        assert (await asyncio.wait_for(from_proxy.get(), 5))["type"] == "websocket.accept"
        closed = await asyncio.wait_for(from_proxy.get(), 5)
        assert closed == {"type": "websocket.close", "code": 1001}
        await asyncio.wait_for(relay, 5)
    await proxy.aclose()


async def _three_messages_then_4001(conn: ServerConnection) -> None:
    """A sandbox's server that sends its last messages and closes with its own code."""
    for n in range(3):
        await conn.send(f"message {n}")
    await conn.close(4001, "the sandbox's own reason")


@pytest.mark.parametrize("client", ["slow", "gone during the pause", "sends a keepalive"])
async def test_the_sandboxs_own_close_come_first_is_not_replaced_by_going_away(client: str) -> None:
    """The sandbox's server closed (4001) while the relay still forwarded its last messages to
    a slow client, and then the sandbox pauses: the client gets the sandbox's close, not 1001.
    A client that went away meanwhile ends the relay quietly, not with an error. A client
    that sends a frame instead (a keepalive) gets them too: the relay's send to the closed
    upstream failed first, and they were dropped with the other direction (1006)."""

    slow = asyncio.Event()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        if message["type"] == "websocket.send":
            await slow.wait()
            if client == "gone during the pause":
                raise OSError("the client went away")  # (as uvicorn's ClientDisconnected)
        sent.append(message)

    proxy = SandboxProxy(OnLoopback())  # type: ignore[arg-type]
    async with serve(_three_messages_then_4001, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        to_proxy: asyncio.Queue[Message] = asyncio.Queue()
        await to_proxy.put({"type": "websocket.connect"})
        relay = asyncio.create_task(proxy(_scope(port), to_proxy.get, send))
        await asyncio.sleep(0.3)  # (the sandbox has closed; its messages wait for the client)
        assert [m["type"] for m in sent] == ["websocket.accept"]
        if client == "sends a keepalive":
            await to_proxy.put({"type": "websocket.receive", "text": "keepalive"})
            await asyncio.sleep(0.2)
        else:
            await asyncio.wait_for(proxy.close_connections(SANDBOX), 5)
        slow.set()
        await asyncio.wait_for(relay, 5)  # (raises if the relay failed)
    await proxy.aclose()
    if client != "gone during the pause":
        assert [m.get("text") for m in sent[1:4]] == [f"message {n}" for n in range(3)]
        assert sent[4:] == [{"type": "websocket.close", "code": 4001}]
