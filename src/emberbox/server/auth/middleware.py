"""API-key authentication as plain ASGI middleware, so it runs before any body is read.

The verified :class:`Principal` lands in ``scope["state"]["principal"]``; routes read it from there.
A short positive cache spares the database on the hot path; revocation takes effect within
``cache_ttl_s``. Requests with a missing or wrong key draw from a token bucket per client
address, so guessing keys is rate-limited too (429 with ``Retry-After`` once it is empty).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ..limits.ratelimit import TokenBuckets
from ..wire_errors import send_json_error
from .keys import hash_key
from .store import Principal

Authenticator = Callable[[str], Awaitable[Principal | None]]

PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class ApiKeyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        authenticate: Authenticator,
        failures: TokenBuckets,
        cache_ttl_s: float = 5.0,
        public_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.public_prefixes = public_prefixes  # paths that check their own signed tokens
        self.authenticate = authenticate
        self.failures = failures
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in PUBLIC_PATHS
            or scope["path"].startswith(self.public_prefixes or ("\0",))
        ):
            await self.app(scope, receive, send)
            return
        key = Headers(scope=scope).get("x-api-key", "")
        principal = await self._lookup(key) if key else None
        if principal is None:
            client = scope.get("client") or ("unknown", 0)
            wait = self.failures.take(str(client[0]))
            if wait > 0:
                retry = str(max(1, math.ceil(wait)))
                await send_json_error(
                    send, 429, "too many requests without a valid API key", {"Retry-After": retry}
                )
            elif not key:
                await send_json_error(send, 401, "missing API key: send it in the X-API-KEY header")
            else:
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
