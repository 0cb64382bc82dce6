"""E2B operations this deployment does not offer yet: each answers 501 with ``{code, message}``
(never 404, which the SDKs read as "this sandbox is gone"). Declared before the sandbox routes so
``/sandboxes/metrics`` is not taken for a sandbox called "metrics"; left out of ``/openapi.json``,
which lists what we serve."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter

from .errors import ApiError

router = APIRouter()

# (method, path, what it is, which work brings it)
_MISSING = [
    ("POST", "/sandboxes/{sandbox_id}/fork", "forking sandboxes", "stateful sandboxes"),
    ("POST", "/sandboxes/{sandbox_id}/snapshots", "snapshots", "stateful sandboxes"),
    ("GET", "/snapshots", "snapshots", "stateful sandboxes"),
    ("PUT", "/sandboxes/{sandbox_id}/network", "changing a sandbox's network", "network policy"),
    ("POST", "/sandboxes/{sandbox_id}/refreshes", "refreshing sandboxes", "a later release"),
    ("GET", "/v2/sandboxes/{sandbox_id}/logs", "structured logs (v2)", "observability"),
    ("GET", "/sandboxes/metrics", "metrics of many sandboxes", "observability"),
]


def _refuser(what: str, later: str) -> Callable[[], Awaitable[None]]:
    async def refuse() -> None:
        raise ApiError(501, f"{what} is not supported yet (planned: {later})", should_retry=False)

    return refuse


for _method, _path, _what, _later in _MISSING:
    router.add_api_route(_path, _refuser(_what, _later), methods=[_method], include_in_schema=False)
