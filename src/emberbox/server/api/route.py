"""The route class of every API router that serves an operation: its bodies are Unicode JSON
(``unicode_json``), and a query parameter it does not take is a 400 naming it. FastAPI ignores
unknown parameters, so a typo (``status=paused`` for ``state``) or an option a newer SDK adds
would list or change something other than what was asked, with no sign of it."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.dependencies.models import Dependant
from starlette.requests import Request
from starlette.responses import Response

from .errors import ApiError
from .unicode_json import UnicodeJsonRoute


def _query_names(dependant: Dependant) -> frozenset[str]:
    """The query parameters a route takes, its dependencies' included."""
    names: set[str] = set()
    stack = [dependant]
    while stack:
        current = stack.pop()
        names.update(field.alias for field in current.query_params)
        stack.extend(current.dependencies)
    return frozenset(names)


class ApiRoute(UnicodeJsonRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        known = _query_names(self.dependant)

        async def handler(request: Request) -> Response:
            unknown = sorted(set(request.query_params) - known)
            if unknown:
                takes = ", ".join(sorted(known)) or "none"
                raise ApiError(
                    400,
                    f"unknown query parameter(s) {', '.join(unknown)} (not supported here; "
                    f"this operation takes: {takes})",
                    should_retry=False,
                )
            return await handle(request)

        return handler
