"""Request bodies whose strings are not Unicode text are refused as invalid JSON.

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


class _UnicodeJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            value = json.loads(body)
            try:
                json.dumps(value, ensure_ascii=False).encode()
            except UnicodeEncodeError:
                raise json.JSONDecodeError(NOT_UNICODE, body.decode(errors="replace"), 0) from None
            self._json = value
        return self._json


class UnicodeJsonRoute(APIRoute):
    """Parses bodies as Unicode JSON (``route.ApiRoute`` builds on it)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            return await handle(_UnicodeJsonRequest(request.scope, request.receive))

        return handler
