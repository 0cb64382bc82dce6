"""Snapshots, forks and rollback (E2B's operations plus our ``/rollback`` extension).

E2B treats a snapshot as a template: it is deleted with ``DELETE /templates/{id}`` (served by
``templates.py``, which hands ids that are not a team's template to :func:`delete_snapshot`) and
named in ``templateID`` at create (``routes.py``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from starlette.status import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from ..db.models import Snapshot
from ..lifecycle.errors import LifecycleError
from ..lifecycle.snapshots import SnapshotService
from .convert import to_sandbox
from .deps import Caller
from .errors import ApiError, error_responses, status_of
from .models import (
    Error,
    ForkRequest,
    ForkResult,
    RollbackRequest,
    Sandbox,
    SnapshotInfo,
    SnapshotRequest,
)
from .route import ApiRoute

router = APIRouter(tags=["snapshots"], route_class=ApiRoute)
FORK_DEFAULT_TIMEOUT_S = 15  # E2B's SandboxForkRequest default


async def snapshots(request: Request) -> SnapshotService:
    svc = request.app.state.snapshots
    assert isinstance(svc, SnapshotService)
    return svc


Snapshots = Annotated[SnapshotService, Depends(snapshots)]


def _domain(request: Request) -> str | None:
    domain = request.app.state.sandbox_domain
    return domain if isinstance(domain, str) else None


def to_info(row: Snapshot) -> SnapshotInfo:
    return SnapshotInfo(
        snapshotID=row.name or row.id,
        names=[row.name] if row.name else [],
        id=row.id,
        sandboxID=row.source_sandbox_id,
        sizeBytes=row.size_bytes,
        createdAt=row.created_at,
    )


@router.post(
    "/sandboxes/{sandbox_id}/snapshots",
    status_code=HTTP_201_CREATED,
    response_model=SnapshotInfo,
    responses=error_responses(404, 409, 501),
    summary="Save a running sandbox's memory and files (memory: false: only its files) as a "
    "snapshot; it keeps running",
)
async def create_snapshot(
    who: Caller,
    svc: Snapshots,
    sandbox_id: str,
    body: Annotated[SnapshotRequest | None, Body()] = None,
) -> SnapshotInfo:
    opts = body or SnapshotRequest()
    return to_info(await svc.create(who, sandbox_id, opts.name, memory=opts.memory is not False))


@router.get(
    "/snapshots",
    response_model=list[SnapshotInfo],
    responses=error_responses(),
    summary="The team's snapshots, newest first (paged with X-Next-Token)",
)
async def list_snapshots(
    response: Response,
    who: Caller,
    svc: Snapshots,
    sandbox_id: Annotated[str | None, Query(alias="sandboxID")] = None,
    name: str | None = None,
    limit: int = 100,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> list[SnapshotInfo]:
    page = await svc.list(who, sandbox_id=sandbox_id, name=name, limit=limit, next_token=next_token)
    if page.next_token:
        response.headers["X-Next-Token"] = page.next_token
    return [to_info(row) for row in page.items]


async def delete_snapshot(who: Caller, svc: SnapshotService, template_id: str) -> Response:
    """``DELETE /templates/{id}`` when the id is not a team's template (``templates.py``);
    the node's built-in templates are not deleted through the API."""
    is_template = svc.sandboxes.templates.resolve(template_id) is not None
    if is_template and await svc.find(who, template_id) is None:
        raise ApiError(400, f"'{template_id}' is a built-in template; it cannot be deleted")
    await svc.delete(who, template_id)
    return Response(status_code=HTTP_204_NO_CONTENT)


@router.post(
    "/sandboxes/{sandbox_id}/fork",
    status_code=HTTP_201_CREATED,
    response_model=list[ForkResult],
    responses=error_responses(404, 409, 501),
    summary="Start count sandboxes from one checkpoint of a running sandbox; it keeps running",
)
async def fork_sandbox(
    request: Request,
    who: Caller,
    svc: Snapshots,
    sandbox_id: str,
    body: Annotated[ForkRequest | None, Body()] = None,
) -> list[ForkResult]:
    opts = body or ForkRequest()
    timeout = FORK_DEFAULT_TIMEOUT_S if opts.timeout is None else opts.timeout
    count = 1 if opts.count is None else opts.count
    results = await svc.fork(who, sandbox_id, count, timeout)
    out = []
    for result in results:
        if isinstance(result, LifecycleError):
            error = Error(
                code=status_of(result), message=result.message, error_code=result.error_code
            )
            out.append(ForkResult(error=error))
        else:
            out.append(ForkResult(sandbox=to_sandbox(result, _domain(request))))
    return out


@router.post(
    "/sandboxes/{sandbox_id}/rollback",
    response_model=Sandbox,
    responses=error_responses(404, 409, 501),
    summary="Put a running sandbox back to one of its snapshots, in place (Emberbox extension)",
)
async def rollback_sandbox(
    request: Request, who: Caller, svc: Snapshots, sandbox_id: str, body: RollbackRequest
) -> Sandbox:
    row = await svc.rollback(who, sandbox_id, body.snapshotID)
    return to_sandbox(row, _domain(request))
