"""A NUL in a request's path or query string is refused with a 400 before any route sees it.

An id, a name or a filter holding one cannot name anything here, and PostgreSQL's text cannot
carry one: looked up there, it was a 500 where SQLite answered 404 (``unicode_json`` refuses
one in a JSON body)."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from ..wire_errors import send_json_error

MESSAGE = "the request's path or query holds a NUL (%00), which no id, name or filter can hold"


class NoNulMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\0" in scope["path"] or b"\0" in unquote_to_bytes(scope.get("query_string", b""))
        ):
            await send_json_error(send, 400, MESSAGE)
            return
        await self.app(scope, receive, send)
