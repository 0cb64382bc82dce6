"""Per-API-key token buckets; over the limit → 429 with ``Retry-After`` (both SDKs honour it)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from ..wire_errors import send_json_error

MAX_BUCKETS = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate_per_s
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, now: float | None = None) -> float:
        """Consume one token; 0.0 if allowed, else seconds until one is available."""
        t = time.monotonic() if now is None else now
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= MAX_BUCKETS:  # many distinct callers: start over, stay small
                self._buckets.clear()
            b = self._buckets[key] = _Bucket(tokens=float(self.burst), updated=t)
        b.tokens = min(float(self.burst), b.tokens + (t - b.updated) * self.rate)
        b.updated = t
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate


class RateLimitMiddleware:
    """Runs after auth: limits requests per key found in ``scope["state"]["principal"]``."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets) -> None:
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("state", {}).get("principal") if scope["type"] == "http" else None
        if principal is not None:
            wait = self.buckets.take(principal.key_id)
            if wait > 0:
                await send_json_error(
                    send,
                    429,
                    "rate limit exceeded for this API key, retry later",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
                return
        await self.app(scope, receive, send)
