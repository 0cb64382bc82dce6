"""The proxy as one ASGI app: route → resolve → forward (HTTP or WebSocket)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hmac
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
from starlette.datastructures import Headers, QueryParams
from starlette.types import Receive, Scope, Send

from ...signed_urls import FILES_PATH, refusal
from ...vocabulary import ENVD_PORT, ENVD_TOKEN_HEADER, TRAFFIC_TOKEN_HEADER
from .http import forward_http, quiet_deliberate_aborts, upstream_client
from .resolver import Location, Paused, SandboxResolver
from .responses import (
    bad_route,
    envd_credentials_missing,
    sandbox_not_found,
    sandbox_paused,
    send_json,
    traffic_token_missing,
)
from .routing import RouteError, Target, route
from .ws import Relay, deny, forward_ws

if TYPE_CHECKING:
    from ..lifecycle.service import Woken

# envd's process output streams, which it ends whole before a checkpoint (``settle``).
PROCESS_STREAMS = frozenset({"/process.Process/Start", "/process.Process/Connect"})
# How long a checkpoint waits for them to be relayed (envd ends them at once; a client that
# reads slowly holds its stream until the proxy's buffers toward it drain).
SETTLE_S = 1.0
# How long a new one waits for a checkpoint under way (a pause of a few GiB takes seconds).
HOLD_S = 30.0


@dataclasses.dataclass(frozen=True)
class _EnvdRefuses:
    """A paused sandbox traffic may wake, asked through envd's port by a request envd would
    refuse once awake: it is not woken (``reason``, envd's words for the refusal)."""

    reason: str


class SandboxProxy:
    """**Parameters:** resolver - finds sandboxes; the proxy keeps one connection pool per
    sandbox and drops it when the resolver forgets the sandbox, because a later sandbox may get
    the same address and a pooled connection to the dead one would fail its first request.
    wake - resumes a paused sandbox whose lifecycle allows it (``SandboxService.wake``: one
    resume per sandbox however many requests wait), whether it runs then and why not; without
    it, paused sandboxes are refused like missing ones."""

    def __init__(
        self,
        resolver: SandboxResolver,
        wake: Callable[[str], Awaitable[Woken]] | None = None,
    ) -> None:
        self.resolver = resolver
        self.wake = wake
        self._clients: dict[str, httpx.AsyncClient] = {}
        # Connections opened for one request sent again (``forward_http``): closed with the
        # pooled ones, so none is saved in a checkpoint.
        self._one_offs: dict[str, weakref.WeakSet[httpx.AsyncClient]] = {}
        # WebSockets being relayed (or connecting), by sandbox: closed with its connections.
        self._relays: dict[str, set[Relay]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # Process output streams being relayed, and checkpoints holding new ones, by sandbox
        # (``settle``, ``holding_streams``); the condition is told when either count falls.
        self._streams: collections.Counter[str] = collections.Counter()
        self._holds: collections.Counter[str] = collections.Counter()
        self._fell = asyncio.Condition()
        resolver.on_forget(self.drop_client)
        quiet_deliberate_aborts()

    def client_for(self, sandbox_id: str) -> httpx.AsyncClient:
        client = self._clients.get(sandbox_id)
        if client is None:
            client = self._clients[sandbox_id] = upstream_client()
        return client

    def one_off_for(self, sandbox_id: str) -> httpx.AsyncClient:
        client = upstream_client(pooled=False)
        self._one_offs.setdefault(sandbox_id, weakref.WeakSet()).add(client)
        return client

    def _taken(self, sandbox_id: str) -> list[httpx.AsyncClient]:
        """The sandbox's clients, no longer handed out."""
        pooled = self._clients.pop(sandbox_id, None)
        one_offs = list(self._one_offs.pop(sandbox_id, ()))
        return [*one_offs, pooled] if pooled is not None else one_offs

    @contextlib.contextmanager
    def _tracked(self, sandbox_id: str) -> Iterator[Relay]:
        relay = Relay()
        relays = self._relays.setdefault(sandbox_id, set())
        relays.add(relay)
        try:
            yield relay
        finally:
            relays.discard(relay)
            if not relays and self._relays.get(sandbox_id) is relays:
                del self._relays[sandbox_id]

    def _closes(self, sandbox_id: str) -> list[Coroutine[Any, Any, None]]:
        """Closing each of the sandbox's clients and WebSockets; none is handed out again."""
        relays = self._relays.pop(sandbox_id, set())
        return [
            *(client.aclose() for client in self._taken(sandbox_id)),
            *(relay.going_away() for relay in relays),
        ]

    def drop_client(self, sandbox_id: str) -> None:
        for closing in self._closes(sandbox_id):
            task = asyncio.get_running_loop().create_task(closing)
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close_connections(self, sandbox_id: str) -> None:
        """Close every connection to the sandbox now, streams and WebSockets included (before
        a checkpoint: a connection saved in one would be restored into its forks)."""
        await asyncio.gather(*self._closes(sandbox_id))

    async def settle(self, sandbox_id: str, timeout_s: float = SETTLE_S) -> bool:
        """Wait until no process output stream of the sandbox is being relayed, at most
        ``timeout_s``; whether none is. Asked before a checkpoint once envd ended its streams
        (``POST /detach``): their last bytes then reach the clients instead of being cut off
        on the wire by the checkpoint."""
        return await self._until(lambda: not self._streams[sandbox_id], timeout_s)

    @contextlib.asynccontextmanager
    async def holding_streams(self, sandbox_id: str) -> AsyncIterator[None]:
        """While a checkpoint saves the sandbox's memory: a new request or WebSocket to it
        waits (``HOLD_S`` at most) and then reaches whatever the sandbox has become (running
        again, or paused: woken if traffic wakes it). One let through meanwhile would meet a
        paused kernel, be cut by the checkpoint (a process stream would take envd's backlog
        with it), or have its connection saved in the checkpoint and restored half-open into
        every fork of it."""
        self._holds[sandbox_id] += 1
        try:
            yield
        finally:
            await self._lower(self._holds, sandbox_id)

    async def _until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        async with self._fell:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._fell.wait_for(done)
            except TimeoutError:
                return False
        return True

    async def _lower(self, counts: collections.Counter[str], sandbox_id: str) -> None:
        counts[sandbox_id] -= 1  # at once: a cancelled notify must not leave it counted
        if counts[sandbox_id] <= 0:
            del counts[sandbox_id]
        async with self._fell:
            self._fell.notify_all()

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
            await _refuse(scope, send, 400, bad_route(str(e)))
            return
        if not await self._admitted(target, headers):
            await _refuse(scope, send, 401, traffic_token_missing(target.sandbox_id, target.port))
            return
        stream = target.port == ENVD_PORT and scope["path"] in PROCESS_STREAMS
        if self._holds[target.sandbox_id]:
            await self._until(lambda: not self._holds[target.sandbox_id], HOLD_S)
        found = await self._locate(target.sandbox_id, _wake_refusal(target, scope, headers))
        if isinstance(found, _EnvdRefuses):
            body = envd_credentials_missing(target.sandbox_id, target.port, found.reason)
            await _refuse(scope, send, 401, body)
            return
        if not isinstance(found, Location):
            if isinstance(found, Paused):
                woke = found.auto_resume and bool(self.wake)
                body = sandbox_paused(target.sandbox_id, woke, found.refused)
            else:
                body = sandbox_not_found(target.sandbox_id)
            await _refuse(scope, send, 502, body)
            return
        address = found.address(target.port)
        host = found.host_header(target.port)
        if ws:
            await forward_ws(
                scope, receive, send, address, target.sandbox_id, target.port, host,
                partial(self._tracked, target.sandbox_id),
            )  # fmt: skip
        else:
            client = self.client_for(target.sandbox_id)
            if stream:
                self._streams[target.sandbox_id] += 1
            try:
                await forward_http(
                    scope, receive, send, client, address, target.sandbox_id, target.port, host,
                    partial(self.one_off_for, target.sandbox_id),
                )  # fmt: skip
            finally:
                if stream:
                    await self._lower(self._streams, target.sandbox_id)

    async def _admitted(self, target: Target, headers: Headers) -> bool:
        """Whether the request may reach the port: envd's always (it checks its own token),
        others unless the sandbox is private and the request lacks its traffic token. Checked
        before anything else, so a request without it cannot wake a paused sandbox through
        those ports (envd's port has its own check before a wake: :func:`_wake_refusal`)."""
        if target.port == ENVD_PORT:
            return True
        found = await self.resolver.lookup(target.sandbox_id)
        token = found.traffic_token if isinstance(found, Location | Paused) else None
        if token is None:
            return True
        presented = headers.get(TRAFFIC_TOKEN_HEADER, "")
        return hmac.compare_digest(presented.encode(), token.encode())

    async def _locate(
        self, sandbox_id: str, refusal_of: Callable[[Paused], str | None]
    ) -> Location | Paused | _EnvdRefuses | None:
        """Where the sandbox answers; a paused one that traffic may wake is resumed first
        (the caller sees only the resume's delay), unless ``refusal_of`` says why this
        request may not wake it."""
        found = await self.resolver.lookup(sandbox_id)
        if not isinstance(found, Paused) or not found.auto_resume or self.wake is None:
            return found
        if (reason := refusal_of(found)) is not None:
            return _EnvdRefuses(reason)
        woken = await self.wake(sandbox_id)
        # As the wake left it, or what it became since: killed (not found), paused for good
        # (a pause it waited for kept only the files: traffic cannot wake it), paused again
        # (not woken twice for one request), or running.
        now = await self.resolver.lookup(sandbox_id)
        if isinstance(now, Paused) and not woken.running:
            return dataclasses.replace(now, refused=woken.refused)
        return now

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _refuse(scope: Scope, send: Send, status: int, body: dict[str, Any]) -> None:
    """The proxy's own answer instead of the sandbox's: JSON, or a WebSocket handshake's
    denial."""
    if scope["type"] == "websocket":
        await deny(scope, send, status, body)
    else:
        await send_json(send, status, body)


def _wake_refusal(target: Target, scope: Scope, headers: Headers) -> Callable[[Paused], str | None]:
    """Why this request may not wake a paused sandbox, None when it may. Through envd's port,
    only a request envd would serve once awake: one carrying its access token, or a valid
    signed URL to its files. Otherwise anyone who knew the sandbox's address could resume it,
    restarting its lifetime and counting it against its team's limits. Its other ports: any
    request that got past their traffic token (:meth:`SandboxProxy._admitted`)."""
    if target.port != ENVD_PORT:
        return lambda _: None
    presented = headers.get(ENVD_TOKEN_HEADER)
    signed = scope["path"] == FILES_PATH and scope["type"] == "http"
    query = QueryParams(scope["query_string"]) if signed else QueryParams()
    method = scope.get("method", "")
    return lambda p: None if not p.envd_token else refusal(p.envd_token, presented, method, query)


__all__ = ["SandboxProxy"]
