"""Refuse request bodies over a byte limit with 413, chunked ones included.

A declared ``Content-Length`` is refused before reading. A chunked body is counted as it arrives;
once over, the app sees a disconnect and whatever it answers is replaced with the 413.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..wire_errors import send_json_error


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        exempt_prefixes: tuple[str, ...] = (),
        exempt_puts: tuple[str, ...] = (),
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_prefixes = exempt_prefixes  # paths that stream to disk under their own limit
        self.exempt_puts = exempt_puts  # the same, for PUTs only (their other methods take JSON)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or (self.exempt_prefixes and scope["path"].startswith(self.exempt_prefixes))
            or (
                self.exempt_puts
                and scope["method"] == "PUT"
                and scope["path"].startswith(self.exempt_puts)
            )
        ):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(send)
                return

        seen = 0
        over = False

        async def counting_receive() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                if not started:
                    started = True
                    await self._refuse(send)
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        await send_json_error(
            send,
            413,
            f"request body is larger than {self.max_bytes} bytes",
            headers={"Connection": "close"},
        )
