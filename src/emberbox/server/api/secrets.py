"""E2B's secrets API: ``/secrets`` (team-scoped, API key). Values are write-only: every answer
is the secret's metadata (E2B's ``Secret`` model), never its value."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel
from starlette.status import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from ..db.models import Secret
from ..secrets.service import SecretService, metadata_of
from .deps import Caller
from .errors import error_responses
from .models import RequestBody
from .route import ApiRoute

router = APIRouter(tags=["secrets"], route_class=ApiRoute)


async def secrets(request: Request) -> SecretService:
    svc = request.app.state.secrets
    assert isinstance(svc, SecretService)
    return svc


Secrets = Annotated[SecretService, Depends(secrets)]


class NewSecret(RequestBody):
    name: str
    value: str
    metadata: dict[str, str] | None = None


class SecretUpdate(RequestBody):
    value: str
    metadata: dict[str, str] | None = None


class SecretInfo(BaseModel):
    secretID: str
    name: str
    currentVersion: int
    metadata: dict[str, str]
    createdAt: dt.datetime
    updatedAt: dt.datetime


def _info(row: Secret) -> SecretInfo:
    return SecretInfo(secretID=row.id, name=row.name, currentVersion=row.current_version,
                      metadata=metadata_of(row), createdAt=row.created_at,
                      updatedAt=row.updated_at)  # fmt: skip


@router.post("/secrets", status_code=HTTP_201_CREATED, response_model=SecretInfo,
             responses=error_responses(409),
             summary="Create a secret (its value is never returned)")  # fmt: skip
async def create_secret(who: Caller, svc: Secrets, body: NewSecret) -> SecretInfo:
    return _info(await svc.create(who, body.name, body.value, body.metadata or {}))


@router.get("/secrets", response_model=list[SecretInfo], responses=error_responses(),
            summary="The team's secrets, by name (X-Next-Token for the next page)")  # fmt: skip
async def list_secrets(
    response: Response,
    who: Caller,
    svc: Secrets,
    limit: int | None = None,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> list[SecretInfo]:
    page = await svc.page(who, limit, next_token)
    if page.next_token:
        response.headers["X-Next-Token"] = page.next_token
    return [_info(row) for row in page.secrets]


@router.get("/secrets/{secret}", response_model=SecretInfo, responses=error_responses(404),
            summary="A secret's metadata, by id or name")  # fmt: skip
async def get_secret(who: Caller, svc: Secrets, secret: str) -> SecretInfo:
    return _info(await svc.get(who, secret))


@router.post("/secrets/{secret}", response_model=SecretInfo, responses=error_responses(404, 409),
             summary="Store a new version of a secret's value")  # fmt: skip
async def update_secret(who: Caller, svc: Secrets, secret: str, body: SecretUpdate) -> SecretInfo:
    return _info(await svc.update(who, secret, body.value, body.metadata))


@router.delete("/secrets/{secret}", status_code=HTTP_204_NO_CONTENT, responses=error_responses(404),
               summary="Delete a secret and all its versions")  # fmt: skip
async def delete_secret(who: Caller, svc: Secrets, secret: str) -> Response:
    await svc.delete(who, secret)
    return Response(status_code=HTTP_204_NO_CONTENT)
