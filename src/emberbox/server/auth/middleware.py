"""API-key authentication as plain ASGI middleware, so it runs before any body is read.

The verified :class:`Principal` lands in ``scope["state"]["principal"]``; routes read it from there.
A short positive cache spares the database on the hot path; revocation takes effect within
``cache_ttl_s``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ..wire_errors import send_json_error
from .keys import hash_key
from .store import Principal

Authenticator = Callable[[str], Awaitable[Principal | None]]

PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, authenticate: Authenticator, cache_ttl_s: float = 5.0) -> None:
        self.app = app
        self.authenticate = authenticate
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        key = Headers(scope=scope).get("x-api-key", "")
        if not key:
            await send_json_error(send, 401, "missing API key: send it in the X-API-KEY header")
            return
        principal = await self._lookup(key)
        if principal is None:
            await send_json_error(send, 401, "invalid API key")
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _lookup(self, key: str) -> Principal | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        principal = await self.authenticate(key)
        if principal is not None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.cache_ttl_s)
        return principal
