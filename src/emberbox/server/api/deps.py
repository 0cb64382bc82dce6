"""FastAPI dependencies: the caller's principal and the sandbox service.

Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` one in its worker
threads, a hop per dependency per request (16 clients reading a sandbox: 150 → 169 requests a
second once the API's dependencies were made async)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from ..auth.store import Principal
from ..lifecycle.service import SandboxService
from .errors import ApiError

# Declared for the OpenAPI document only; ApiKeyMiddleware has already checked the key.
_api_key = APIKeyHeader(name="X-API-KEY", auto_error=False)


async def principal(request: Request, _key: str | None = Security(_api_key)) -> Principal:
    who = request.scope.get("state", {}).get("principal")
    if not isinstance(who, Principal):
        raise ApiError(401, "missing API key: send it in the X-API-KEY header")
    return who


async def service(request: Request) -> SandboxService:
    svc = request.app.state.service
    assert isinstance(svc, SandboxService)
    return svc


Caller = Annotated[Principal, Depends(principal)]
Service = Annotated[SandboxService, Depends(service)]
