"""Shutting down without dropping anyone: on SIGTERM the server stops taking new work, lets
what is under way finish, and only then closes its listeners.

While draining, new HTTP requests get a JSON ``503`` with ``Retry-After`` (which the SDKs
retry) instead of a reset or uvicorn's plain-text 500, and requests already in flight (a
create, a streamed command) run to their end, up to a grace period.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

from .wire_errors import send_json_error


class Drain:
    """Counts requests in flight across the apps it wraps; :meth:`wrap` each listener's app."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def drained(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] not in ("http", "websocket"):
                await app(scope, receive, send)
                return
            if self.draining:
                if scope["type"] == "http":
                    await send_json_error(
                        send,
                        503,
                        "the server is shutting down; retry shortly",
                        {"Retry-After": "1", "Connection": "close"},
                    )
                else:
                    await send({"type": "websocket.close", "code": 1012})  # service restart
                return
            self._in_flight += 1
            self._idle.clear()
            try:
                await app(scope, receive, send)
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()

        return drained

    async def drain(self, grace_s: float) -> bool:
        """Refuse new requests; True once none is in flight, False if ``grace_s`` ran out."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            return False
        return True
