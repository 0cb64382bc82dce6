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

from emberbox.server.proxy.app import SandboxProxy
from emberbox.server.proxy.resolver import Location

SANDBOX = "wssandbox00000000000"


class _At:
    def on_forget(self, _: Callable[[str], None]) -> None:
        pass

    async def lookup(self, _: str) -> Location:
        return Location("http://127.0.0.1:1", "127.0.0.1")

    resolve = lookup


@pytest.mark.parametrize("how", ["pause", "kill"])
async def test_a_relayed_websocket_is_closed_going_away_with_the_sandboxs_connections(
    how: str,
) -> None:
    upstream_closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        await ws.send("hello")
        await ws.wait_closed()
        upstream_closed.set_result(ws.close_code)

    proxy = SandboxProxy(_At())  # type: ignore[arg-type]
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        to_proxy: asyncio.Queue[Message] = asyncio.Queue()
        from_proxy: asyncio.Queue[Message] = asyncio.Queue()
        scope: dict[str, Any] = {
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
