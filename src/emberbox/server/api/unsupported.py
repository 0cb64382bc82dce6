"""E2B operations this deployment does not offer yet: each answers 501 with ``{code, message}``
(never 404, which the SDKs read as "this sandbox is gone"). Declared before the sandbox routes so
``/sandboxes/metrics`` is not taken for a sandbox called "metrics"; left out of ``/openapi.json``,
which lists what we serve."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter

from .errors import ApiError
from .unicode_json import UnicodeJsonRoute

router = APIRouter(route_class=UnicodeJsonRoute)

# (method, path, what it is, which work brings it)
_MISSING = [
    ("POST", "/sandboxes/{sandbox_id}/refreshes", "refreshing sandboxes", "a later release"),
    ("GET", "/sandboxes/metrics", "metrics of many sandboxes", "observability"),
    ("POST", "/templates/{template_id}/builds/{build_id}",
     "the v1 build start (use POST /v2/templates/{templateID}/builds/{buildID})", "none"),
    ("GET", "/templates/{template_id}/tags/count", "counting tags", "a later release"),
    ("GET", "/templates/{template_id}/tags/exists", "tag lookups", "a later release"),
    ("GET", "/templates/{template_id}/tags/groups", "tag groups", "a later release"),
    ("GET", "/templates/{template_id}/tags/{tag}/assignments", "tag history", "a later release"),
    ("GET", "/default-templates", "default templates", "a later release"),
]  # fmt: skip


def _refuser(what: str, later: str) -> Callable[[], Awaitable[None]]:
    async def refuse() -> None:
        raise ApiError(501, f"{what} is not supported yet (planned: {later})", should_retry=False)

    return refuse


for _method, _path, _what, _later in _MISSING:
    router.add_api_route(_path, _refuser(_what, _later), methods=[_method], include_in_schema=False)
