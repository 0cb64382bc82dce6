"""Request bodies whose strings are not Unicode text, or hold a NUL, are refused as invalid
JSON (a NUL: PostgreSQL's text cannot hold one; SQLite stored it, PostgreSQL answered 500).

JSON's ``\\uD800`` escapes can spell a lone surrogate, which ``json.loads`` and pydantic both
accept as a ``str`` that no encoder can write: it failed later, in the database's encoding of a
template name or metadata, in ``.encode()`` of a secret, or in rendering the validation message
that quoted it, each a 500. Checked once, as the body is parsed, it is a 400 like any other
malformed body."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

NOT_UNICODE = "a string holds a lone surrogate (\\ud800-\\udfff): it is not Unicode text"
HOLDS_NUL = "a string holds a NUL (\\u0000), which no name, value or text here can hold"


def _holds_nul(value: Any) -> bool:
    """Whether a string anywhere in a parsed JSON value (keys included) holds a NUL:
    PostgreSQL's text cannot store one (a 500 there, stored on SQLite)."""
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


class _UnicodeJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            value = json.loads(body)
            try:
                json.dumps(value, ensure_ascii=False).encode()
            except UnicodeEncodeError:
                raise json.JSONDecodeError(NOT_UNICODE, body.decode(errors="replace"), 0) from None
            if _holds_nul(value):
                raise json.JSONDecodeError(HOLDS_NUL, body.decode(errors="replace"), 0)
            self._json = value
        return self._json


class UnicodeJsonRoute(APIRoute):
    """Parses bodies as Unicode JSON (``route.ApiRoute`` builds on it)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            return await handle(_UnicodeJsonRequest(request.scope, request.receive))

        return handler
