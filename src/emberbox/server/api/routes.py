"""The sandbox endpoints of protocol §1.4, v1 and v2 paths side by side."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from starlette.status import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from ..db.models import utcnow
from ..lifecycle.service import CreateRequest
from ..lifecycle.states import State
from .convert import to_detail, to_listed, to_metric, to_sandbox
from .deps import Caller, Service
from .errors import ApiError, error_responses
from .models import (
    ConnectSandbox,
    ListedSandbox,
    NewSandbox,
    NewSandboxV2,
    PauseRequest,
    ResumedSandbox,
    Sandbox,
    SandboxDetail,
    SandboxMetric,
    TimeoutRequest,
)
from .network import create_options
from .query import parse_metadata, parse_order, parse_states, parse_time
from .route import ApiRoute

MAX_PAGE = 100
V2_DEFAULT_TIMEOUT_S = 300
V1_DEFAULT_TIMEOUT_S = 15
# E2B's ResumedSandbox.timeout default (the legacy resume's body may leave it out).
LEGACY_RESUME_TIMEOUT_S = 15


router = APIRouter(tags=["sandboxes"], route_class=ApiRoute)
RESUMED: dict[str, Any] = {"model": Sandbox, "description": "Resumed a paused sandbox"}


def _domain(request: Request) -> str | None:
    domain = request.app.state.sandbox_domain
    return domain if isinstance(domain, str) else None


IDEMPOTENCY_KEY = re.compile(r"^[a-z0-9-]{1,255}$")


async def _create(
    request: Request, who: Caller, svc: Service, body: NewSandboxV2, default_timeout: int
) -> Sandbox:
    key = request.headers.get("idempotency-key")
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "Idempotency-Key must be 1-255 characters of [a-z0-9-]")
    if body.mcp is not None:
        raise ApiError(501, "MCP gateway sandboxes are not supported", should_retry=False)
    if body.autoPauseMemory is False and not body.autoPause:
        raise ApiError(400, "autoPauseMemory applies only with autoPause: true")
    if body.iam and body.iam.get("tokens"):
        raise ApiError(501, "workload identity (iam tokens) is not supported", should_retry=False)
    if any("\0" in text for item in (body.envVars or {}).items() for text in item):
        raise ApiError(400, "envVars: a name or value holds a NUL, which no process can carry")
    network = create_options(body.network)
    req = CreateRequest(
        template=body.templateID,
        timeout_s=default_timeout if body.timeout is None else body.timeout,
        metadata=body.metadata or {},
        env_vars=body.envVars or {},
        allow_internet=body.allow_internet_access is not False,
        auto_pause=bool(body.autoPause),
        auto_pause_memory=body.autoPauseMemory is not False,
        auto_resume=bool(body.autoResume and body.autoResume.get("enabled")),
        idempotency_key=key,
        allow_out=network.allow_out,
        deny_out=network.deny_out,
        header_rules=network.header_rules,
        egress_proxy=network.proxy,
        dns_servers=network.dns_servers,
        allow_public_traffic=network.allow_public_traffic,
        mask_request_host=network.mask_request_host,
        volume_mounts=[{"name": m["name"], "path": m["path"]} for m in body.volumeMounts or ()],
    )
    row = await svc.create(who, req)
    return to_sandbox(row, _domain(request))


@router.post(
    "/v2/sandboxes",
    status_code=HTTP_201_CREATED,
    response_model=Sandbox,
    responses=error_responses(404, 409, 413, 501, 503),
    summary="Create a sandbox",
)
async def create_v2(request: Request, who: Caller, svc: Service, body: NewSandboxV2) -> Sandbox:
    return await _create(request, who, svc, body, V2_DEFAULT_TIMEOUT_S)


@router.post(
    "/sandboxes",
    status_code=HTTP_201_CREATED,
    response_model=Sandbox,
    responses=error_responses(404, 409, 413, 501, 503),
    summary="Create a sandbox (older SDKs)",
)
async def create_v1(request: Request, who: Caller, svc: Service, body: NewSandbox) -> Sandbox:
    return await _create(request, who, svc, body, V1_DEFAULT_TIMEOUT_S)


@router.post(
    "/v2/sandboxes/{sandbox_id}/connect",
    response_model=Sandbox,
    responses={**error_responses(404, 409, 413, 501), 201: RESUMED},
    summary="Connect to (and extend) a running sandbox; resume a paused one (201)",
    operation_id="connect_v2",
)
@router.post(
    "/sandboxes/{sandbox_id}/connect",
    response_model=Sandbox,
    responses={**error_responses(404, 409, 413, 501), 201: RESUMED},
    summary="Connect to a sandbox (older SDKs)",
    operation_id="connect_v1",
)
async def connect(
    request: Request,
    response: Response,
    who: Caller,
    svc: Service,
    sandbox_id: str,
    body: Annotated[ConnectSandbox | None, Body()] = None,
) -> Sandbox:
    """One handler for both paths: the v1 and v2 connect contracts are the same."""
    opts = body or ConnectSandbox()
    row, resumed = await svc.connect(who, sandbox_id, opts.timeout, opts.memory is not False)
    response.status_code = 201 if resumed else 200
    return to_sandbox(row, _domain(request))


@router.post(
    "/sandboxes/{sandbox_id}/resume",
    status_code=HTTP_201_CREATED,
    response_model=Sandbox,
    responses=error_responses(404, 409, 413, 501),
    summary="Resume a paused sandbox (SDKs before ~2.6); 409 when it is running",
)
async def resume_legacy(
    request: Request,
    who: Caller,
    svc: Service,
    sandbox_id: str,
    body: Annotated[ResumedSandbox | None, Body()] = None,
) -> Sandbox:
    opts = body or ResumedSandbox()
    if opts.autoPause:
        svc.check_can_pause("autoPause")
    row = await svc.get(who, sandbox_id)
    if row.state == "running":
        raise ApiError(409, f"sandbox '{sandbox_id}' is already running")
    timeout = LEGACY_RESUME_TIMEOUT_S if opts.timeout is None else opts.timeout
    on_timeout = None if opts.autoPause is None else "pause" if opts.autoPause else "kill"
    row, _ = await svc.connect(who, sandbox_id, timeout, opts.memory is not False,
                               resume_only=True, on_timeout=on_timeout)  # fmt: skip
    return to_sandbox(row, _domain(request))


@router.get(
    "/v2/sandboxes",
    response_model=list[ListedSandbox],
    responses={
        **error_responses(),
        200: {
            "description": "One page, newest first unless order=asc",
            "headers": {
                "X-Next-Token": {
                    "description": "Cursor for the next page; absent on the last page",
                    "schema": {"type": "string"},
                }
            },
        },
    },
    summary="List sandboxes (X-Next-Token paging)",
)
async def list_v2(
    response: Response,
    who: Caller,
    svc: Service,
    metadata: str | None = None,
    state: Annotated[list[str] | None, Query()] = None,
    order: str | None = None,
    startedAfter: str | None = None,
    template: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    nextToken: str | None = None,
) -> list[ListedSandbox]:
    page = await svc.list(
        who,
        parse_states(state),
        metadata=parse_metadata(metadata),
        template=template,
        started_after=parse_time(startedAfter, "startedAfter"),
        descending=parse_order(order),
        limit=limit,
        cursor=nextToken,
    )
    if page.next_token:
        response.headers["X-Next-Token"] = page.next_token
    return [to_listed(r) for r in page.items]


@router.get(
    "/sandboxes",
    response_model=list[ListedSandbox],
    responses=error_responses(),
    summary="List running sandboxes (1.x SDKs; first 100)",
)
async def list_v1(who: Caller, svc: Service, metadata: str | None = None) -> list[ListedSandbox]:
    page = await svc.list(
        who, {State.RUNNING, State.PAUSING}, metadata=parse_metadata(metadata), limit=MAX_PAGE
    )
    return [to_listed(r) for r in page.items]


@router.get(
    "/sandboxes/{sandbox_id}",
    response_model=SandboxDetail,
    responses=error_responses(404),
    summary="Get a sandbox",
)
async def get_sandbox(
    request: Request, who: Caller, svc: Service, sandbox_id: str
) -> SandboxDetail:
    return to_detail(await svc.get(who, sandbox_id), _domain(request))


@router.delete(
    "/sandboxes/{sandbox_id}",
    status_code=HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404),
    summary="Kill a sandbox",
)
async def kill_sandbox(who: Caller, svc: Service, sandbox_id: str) -> Response:
    await svc.kill(who, sandbox_id)
    return Response(status_code=HTTP_204_NO_CONTENT)


@router.post(
    "/sandboxes/{sandbox_id}/timeout",
    status_code=HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 409, 413),
    summary="Set the end time to now + timeout seconds (a running sandbox; 409 when paused)",
)
async def set_timeout(who: Caller, svc: Service, sandbox_id: str, body: TimeoutRequest) -> Response:
    await svc.set_timeout(who, sandbox_id, body.timeout)
    return Response(status_code=HTTP_204_NO_CONTENT)


@router.post(
    "/sandboxes/{sandbox_id}/pause",
    status_code=HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 409, 413, 501, 503),
    summary="Pause a sandbox: memory and files, or only its files (memory: false)",
)
async def pause_sandbox(
    who: Caller,
    svc: Service,
    sandbox_id: str,
    body: Annotated[PauseRequest | None, Body()] = None,
) -> Response:
    opts = body or PauseRequest()
    await svc.pause(
        who,
        sandbox_id,
        keep_memory=opts.memory is not False,
        require_healthy_guest=opts.requireHealthyGuest is True,
    )
    return Response(status_code=HTTP_204_NO_CONTENT)


@router.get(
    "/sandboxes/{sandbox_id}/metrics",
    response_model=list[SandboxMetric],
    responses=error_responses(404, 501),
    summary="Current resource usage (one sample, or none); no history yet (start/end: 501)",
)
async def sandbox_metrics(
    who: Caller,
    svc: Service,
    sandbox_id: str,
    start: int | None = None,
    end: int | None = None,
) -> list[SandboxMetric]:
    if start is not None or end is not None:
        raise ApiError(
            501,
            "metrics history (start/end) is not kept yet; ask without them for the current sample",
            should_retry=False,
        )
    _row, stats = await svc.stats(who, sandbox_id)
    return [] if stats is None else [to_metric(stats, utcnow())]
