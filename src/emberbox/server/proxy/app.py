"""The proxy as one ASGI app: route → resolve → forward (HTTP or WebSocket)."""

from __future__ import annotations

import asyncio

import httpx
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from .http import forward_http, quiet_deliberate_aborts, upstream_client
from .resolver import SandboxResolver
from .responses import bad_route, sandbox_not_found, send_json
from .routing import RouteError, route
from .ws import deny, forward_ws


class SandboxProxy:
    """**Parameters:** resolver - finds sandboxes; the proxy keeps one connection pool per
    sandbox and drops it when the resolver forgets the sandbox, because a later sandbox may get
    the same address and a pooled connection to the dead one would fail its first request."""

    def __init__(self, resolver: SandboxResolver) -> None:
        self.resolver = resolver
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._closing: set[asyncio.Task[None]] = set()
        resolver.on_forget(self.drop_client)
        quiet_deliberate_aborts()

    def client_for(self, sandbox_id: str) -> httpx.AsyncClient:
        client = self._clients.get(sandbox_id)
        if client is None:
            client = self._clients[sandbox_id] = upstream_client()
        return client

    def drop_client(self, sandbox_id: str) -> None:
        client = self._clients.pop(sandbox_id, None)
        if client is not None:
            task = asyncio.get_running_loop().create_task(client.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.aclose() for c in clients), *self._closing)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        ws = kind == "websocket"
        headers = Headers(scope=scope)
        try:
            target = route(headers)
        except RouteError as e:
            if not ws and scope["path"] == "/health":
                await send_json(send, 200, {"status": "ok"})
                return
            if ws:
                await deny(scope, send, 400, bad_route(str(e)))
            else:
                await send_json(send, 400, bad_route(str(e)))
            return
        location = await self.resolver.resolve(target.sandbox_id)
        if location is None:
            body = sandbox_not_found(target.sandbox_id)
            if ws:
                await deny(scope, send, 502, body)
            else:
                await send_json(send, 502, body)
            return
        address = location.address(target.port)
        if ws:
            await forward_ws(scope, receive, send, address, target.sandbox_id, target.port)
        else:
            client = self.client_for(target.sandbox_id)
            await forward_http(
                scope, receive, send, client, address, target.sandbox_id, target.port
            )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


__all__ = ["SandboxProxy"]
