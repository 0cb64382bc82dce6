"""The template endpoints (E2B's build system v2, as the SDK's ``Template.build`` calls them):
request a build, upload files by hash, start it, follow status and logs; list, get, update and
delete templates; aliases and tags. The upload URL itself is served by :func:`upload_app`,
outside API-key auth: its signed token is the check."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.responses import JSONResponse
from starlette.status import HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from starlette.types import Receive, Scope, Send

from ...vocabulary import ENVD_VERSION
from ..builds.service import Listed, TemplateService
from ..builds.uploads import BAD, UPLOAD_PREFIX, UploadRefused
from ..db import cursors
from ..db.templates import BuildLogLine
from ..db.templates import TemplateBuild as BuildRow
from ..lifecycle.errors import LifecycleError
from ..wire_errors import error_body
from .deps import Caller
from .errors import ApiError, error_responses, status_of
from .query import parse_ms
from .route import ApiRoute
from .snapshots import delete_snapshot
from .template_models import (
    AssignedTemplateTags,
    AssignTemplateTagsRequest,
    BuildLogEntry,
    BuildStatusReason,
    DeleteTemplateTagsRequest,
    Template,
    TemplateAliasResponse,
    TemplateBuild,
    TemplateBuildFileUpload,
    TemplateBuildInfo,
    TemplateBuildLogsResponse,
    TemplateBuildRequestLegacy,
    TemplateBuildRequestV3,
    TemplateBuildStartV2,
    TemplateRequestResponseV3,
    TemplateTag,
    TemplateUpdateRequest,
    TemplateUpdateResponse,
    TemplateWithBuilds,
)

router = APIRouter(tags=["templates"], route_class=ApiRoute)

T = TypeVar("T")


async def templates(request: Request) -> TemplateService:
    svc = request.app.state.templates
    assert isinstance(svc, TemplateService)
    return svc


Templates = Annotated[TemplateService, Depends(templates)]


# ---- shapes ---------------------------------------------------------------------------------


def _entry(row: BuildLogLine) -> BuildLogEntry:
    return BuildLogEntry(timestamp=row.timestamp, message=row.message, level=row.level,  # type: ignore[arg-type]
                         step=row.step)  # fmt: skip


def _build(row: BuildRow) -> TemplateBuild:
    return TemplateBuild(
        buildID=row.id, status=row.status, createdAt=row.created_at,  # type: ignore[arg-type]
        updatedAt=row.updated_at, cpuCount=row.cpu_count, memoryMB=row.memory_mb,
        diskSizeMB=row.disk_mb, envdVersion=ENVD_VERSION, finishedAt=row.finished_at,
    )  # fmt: skip


def _template(listed: Listed) -> dict[str, Any]:
    tpl, current = listed.template, listed.current
    return {
        "templateID": tpl.id,
        "buildID": current.id if current else "",
        "cpuCount": current.cpu_count if current else 0,
        "memoryMB": current.memory_mb if current else 0,
        "diskSizeMB": current.disk_mb if current else 0,
        "public": tpl.public,
        "aliases": [tpl.name],
        "names": [tpl.name],
        "createdAt": tpl.created_at,
        "updatedAt": tpl.updated_at,
        "createdBy": None,
        "lastSpawnedAt": tpl.last_spawned_at,
        "spawnCount": tpl.spawn_count,
        "buildCount": len(listed.builds),
        "envdVersion": ENVD_VERSION,
        "buildStatus": current.status if current else "waiting",
    }


def _check_team(who: Caller, team_id: str | None) -> None:
    if team_id and team_id != who.team_id:
        raise ApiError(403, "teamID must be your own team (the API key's)")


# ---- create and build -----------------------------------------------------------------------


async def _request(
    who: Caller, svc: TemplateService, name: str | None, body: TemplateBuildRequestV3
) -> TemplateRequestResponseV3:
    _check_team(who, body.teamID)
    if not name:
        raise ApiError(400, "name is required")
    req = await svc.request_build(who, name, body.tags or [], body.cpuCount, body.memoryMB,
                                  body.minFreeDiskMb)  # fmt: skip
    return TemplateRequestResponseV3(
        templateID=req.template.id, buildID=req.build.id, public=req.template.public,
        names=[req.template.name], tags=req.tags, aliases=[req.template.name],
    )  # fmt: skip


@router.post(
    "/v3/templates",
    status_code=HTTP_202_ACCEPTED,
    response_model=TemplateRequestResponseV3,
    responses=error_responses(403, 409),
    summary="Request a build of a template (created on first use of its name)",
)
async def request_build_v3(
    who: Caller, svc: Templates, body: TemplateBuildRequestV3
) -> TemplateRequestResponseV3:
    return await _request(who, svc, body.name or body.alias, body)


async def _request_legacy(
    who: Caller, svc: TemplateService, body: TemplateBuildRequestLegacy
) -> TemplateRequestResponseV3:
    if body.dockerfile is not None or body.startCmd is not None or body.readyCmd is not None:
        raise ApiError(
            501,
            "v1 Dockerfile builds are not supported: request a build with POST /v3/templates "
            "and start it with POST /v2/templates/{templateID}/builds/{buildID}",
            should_retry=False,
        )
    v3 = TemplateBuildRequestV3(teamID=body.teamID, cpuCount=body.cpuCount,
                                memoryMB=body.memoryMB)  # fmt: skip
    return await _request(who, svc, body.name or body.alias, v3)


@router.post(
    "/v2/templates",
    status_code=HTTP_202_ACCEPTED,
    response_model=TemplateRequestResponseV3,
    responses=error_responses(403, 409, 501),
    summary="Request a build (v2 body: alias)",
)
async def request_build_v2(
    who: Caller, svc: Templates, body: TemplateBuildRequestLegacy
) -> TemplateRequestResponseV3:
    return await _request_legacy(who, svc, body)


@router.post(
    "/templates",
    status_code=HTTP_202_ACCEPTED,
    response_model=TemplateRequestResponseV3,
    responses=error_responses(403, 409, 501),
    summary="Request a build (v1 body: alias; a dockerfile is refused)",
)
async def request_build_v1(
    who: Caller, svc: Templates, body: TemplateBuildRequestLegacy
) -> TemplateRequestResponseV3:
    return await _request_legacy(who, svc, body)


@router.get(
    "/templates/{template_id}/files/{files_hash}",
    status_code=HTTP_201_CREATED,
    response_model=TemplateBuildFileUpload,
    responses=error_responses(404),
    summary="Whether a COPY step's files are uploaded, else a signed URL to PUT them to",
)
async def file_upload_link(
    request: Request, who: Caller, svc: Templates, template_id: str, files_hash: str
) -> TemplateBuildFileUpload:
    present, path = await svc.upload_link(who, template_id, files_hash)
    return TemplateBuildFileUpload(present=present, url=str(request.base_url).rstrip("/") + path)


@router.post(
    "/v2/templates/{template_id}/builds/{build_id}",
    status_code=HTTP_202_ACCEPTED,
    response_class=Response,
    responses=error_responses(404, 409, 501),
    summary="Start a requested build with its steps",
)
async def start_build(
    who: Caller, svc: Templates, template_id: str, build_id: str, body: TemplateBuildStartV2
) -> Response:
    await svc.start_build(who, template_id, build_id, body.model_dump())
    return Response(status_code=HTTP_202_ACCEPTED)


@router.get(
    "/templates/{template_id}/builds/{build_id}/status",
    response_model=TemplateBuildInfo,
    responses=error_responses(404),
    summary="Build status, with log entries from logsOffset on (at most 100 per call)",
)
async def build_status(
    who: Caller,
    svc: Templates,
    template_id: str,
    build_id: str,
    logs_offset: Annotated[int, Query(alias="logsOffset", ge=0)] = 0,
    limit: Annotated[int, Query(ge=0, le=100)] = 100,
    level: str | None = None,
) -> TemplateBuildInfo:
    st = await svc.status(who, template_id, build_id, logs_offset, limit, level)
    entries = [_entry(e) for e in st.entries]
    reason = None
    if st.build.status == "error":
        tail = [e for e in entries if e.level == "error"][-5:]
        reason = BuildStatusReason(message=st.build.reason or "the build failed",
                                   step=st.build.reason_step, logEntries=tail)  # fmt: skip
    return TemplateBuildInfo(
        logs=[e.message for e in entries], logEntries=entries, templateID=st.build.template_id,
        buildID=st.build.id, status=st.build.status, reason=reason,  # type: ignore[arg-type]
    )  # fmt: skip


@router.get(
    "/templates/{template_id}/builds/{build_id}/logs",
    response_model=TemplateBuildLogsResponse,
    responses=error_responses(400, 404),
    summary="Build logs from a cursor (a time in ms), forward or backward",
)
async def build_logs(
    who: Caller,
    svc: Templates,
    template_id: str,
    build_id: str,
    cursor: int | None = None,
    limit: Annotated[int, Query(ge=0, le=1000)] = 100,
    direction: Annotated[str, Query(pattern="^(forward|backward)$")] = "forward",
    level: str | None = None,
    source: Annotated[str | None, Query(pattern="^(temporary|persistent)$")] = None,
) -> TemplateBuildLogsResponse:
    at = parse_ms(cursor, "cursor")
    rows = await svc.logs(who, template_id, build_id, at, limit, direction == "forward", level)
    return TemplateBuildLogsResponse(logs=[_entry(r) for r in rows])


# ---- tags (before /templates/{template_id}: "tags" is not an id) ---------------------------


@router.post("/templates/tags", status_code=HTTP_201_CREATED,
             response_model=AssignedTemplateTags, responses=error_responses(404),
             summary="Point tags at the build a name:tag names")  # fmt: skip
async def assign_tags(
    who: Caller, svc: Templates, body: AssignTemplateTagsRequest
) -> AssignedTemplateTags:
    build_id, tags = await svc.assign_tags(who, body.target, body.tags)
    return AssignedTemplateTags(tags=tags, buildID=build_id)


@router.delete("/templates/tags", status_code=HTTP_204_NO_CONTENT, response_class=Response,
               responses=error_responses(404), summary="Remove tags from a template")  # fmt: skip
async def delete_tags(who: Caller, svc: Templates, body: DeleteTemplateTagsRequest) -> Response:
    await svc.remove_tags(who, body.name, body.tags)
    return Response(status_code=HTTP_204_NO_CONTENT)


@router.get("/templates/{template_id}/tags", response_model=list[TemplateTag],
            responses=error_responses(404), summary="A template's tags")  # fmt: skip
async def list_tags(who: Caller, svc: Templates, template_id: str) -> list[TemplateTag]:
    return [TemplateTag(tag=t.tag, buildID=t.build_id, createdAt=t.created_at)
            for t in await svc.list_tags(who, template_id)]  # fmt: skip


# ---- list, get, update, delete --------------------------------------------------------------


@router.get("/templates", response_model=list[Template], responses=error_responses(),
            summary="The team's templates")  # fmt: skip
async def list_templates(
    who: Caller, svc: Templates, team_id: Annotated[str | None, Query(alias="teamID")] = None
) -> list[dict[str, Any]]:
    _check_team(who, team_id)
    return [_template(t) for t in await svc.list_templates(who)]


@router.get("/v2/templates", response_model=list[Template], responses=error_responses(403),
            summary="The team's templates (v2)")  # fmt: skip
async def list_templates_v2(
    who: Caller,
    svc: Templates,
    response: Response,
    team_id: Annotated[str | None, Query(alias="teamID")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> list[dict[str, Any]]:
    """Oldest first, ``limit`` at a time; the next page's token in ``X-Next-Token``."""
    _check_team(who, team_id)
    listed = await svc.list_templates(who)
    page = _page(listed, lambda t: (t.template.created_at, t.template.id), limit, next_token,
                 response)  # fmt: skip
    return [_template(t) for t in page]


@router.get("/templates/aliases/{alias}", response_model=TemplateAliasResponse,
            responses=error_responses(404), summary="The team's template of this name")  # fmt: skip
async def template_alias(who: Caller, svc: Templates, alias: str) -> TemplateAliasResponse:
    tpl = await svc.alias(who, alias)
    return TemplateAliasResponse(templateID=tpl.id, public=tpl.public)


@router.get("/templates/{template_id}", response_model=TemplateWithBuilds,
            responses=error_responses(404), summary="A template and its builds")  # fmt: skip
async def get_template(
    who: Caller,
    svc: Templates,
    template_id: str,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> dict[str, Any]:
    """Its builds newest first, ``limit`` at a time; the next page's token in
    ``X-Next-Token``."""
    listed = await svc.get(who, template_id)
    builds = _page(listed.builds, lambda b: (b.created_at, b.id), limit, next_token, response,
                   newest_first=True)  # fmt: skip
    return {**_template(listed), "builds": [_build(b) for b in builds]}


def _page(
    items: list[T],
    key: Callable[[T], tuple[dt.datetime, str]],
    limit: int,
    next_token: str | None,
    response: Response,
    newest_first: bool = False,
) -> list[T]:
    """One page of ``items`` (in ``key`` order) after the page ``next_token`` ended; when
    more follow, the token of this one's end goes in ``X-Next-Token``."""
    items = sorted(items, key=key, reverse=newest_first)  # (the tokens' order, not SQL's)
    if next_token:
        try:
            after = cursors.decode(next_token)
        except cursors.BadCursor:
            raise ApiError(400, "nextToken is not valid") from None
        items = [i for i in items if (key(i) < after if newest_first else key(i) > after)]
    page = items[:limit]
    if len(items) > limit:
        response.headers["X-Next-Token"] = cursors.encode(*key(page[-1]))
    return page


@router.delete(
    "/templates/{template_id:path}",  # snapshots named with a '/' before 2026-12-06
    status_code=HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404),
    summary="Delete a template with its builds (or a snapshot: E2B deletes those as templates)",
)
async def delete_template(
    request: Request, who: Caller, svc: Templates, template_id: str
) -> Response:
    # A name with a '/' is a snapshot's (such names were once taken): a template reference
    # drops its 'team/' prefix, and 'acme/myapp' would delete the template 'myapp'.
    if "/" not in template_id and await svc.owns(who, template_id):
        await svc.delete(who, template_id)
        return Response(status_code=HTTP_204_NO_CONTENT)
    return await delete_snapshot(who, request.app.state.snapshots, template_id)


async def _update(
    who: Caller, svc: TemplateService, template_id: str, body: TemplateUpdateRequest
) -> TemplateUpdateResponse:
    listed = await svc.update(who, template_id, body.public)
    return TemplateUpdateResponse(names=[listed.template.name])


@router.patch("/templates/{template_id}", response_class=Response, responses=error_responses(404),
              summary="Update a template (public); v1 answers 200 without a body")  # fmt: skip
async def update_template(
    who: Caller, svc: Templates, template_id: str, body: TemplateUpdateRequest
) -> Response:
    await _update(who, svc, template_id, body)
    return Response(status_code=200)


@router.patch("/v2/templates/{template_id}", response_model=TemplateUpdateResponse,
              responses=error_responses(404), summary="Update a template (public; v2)")  # fmt: skip
async def update_template_v2(
    who: Caller, svc: Templates, template_id: str, body: TemplateUpdateRequest
) -> TemplateUpdateResponse:
    return await _update(who, svc, template_id, body)


@router.post("/templates/{template_id}", include_in_schema=False)
async def rebuild_v1(template_id: str) -> None:
    """Declared after ``/templates/tags`` so that path is not taken for a template id."""
    raise ApiError(
        501,
        "rebuilding with the v1 API is not supported: request a build with POST /v3/templates",
        should_retry=False,
    )


# ---- the upload URL -------------------------------------------------------------------------


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    await JSONResponse(body, status)({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def upload_app(templates: TemplateService) -> Any:
    """ASGI app for ``PUT /_uploads/templates/{templateID}/{hash}?expires=&signature=``."""
    uploads = templates.uploads

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        parts = scope["path"].removeprefix(UPLOAD_PREFIX).split("/")
        if scope["method"] != "PUT" or len(parts) != 2:
            await _json(send, 405, error_body(405, "upload with PUT to the URL you were given"))
            return
        query = parse_qs(scope.get("query_string", b"").decode())
        template_id, files_hash = parts

        async def chunks() -> Any:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise UploadRefused("the client went away during the upload")
                yield message.get("body", b"")
                if not message.get("more_body"):
                    return

        try:
            uploads.path(template_id, files_hash)
            uploads.check_token(template_id, files_hash, query.get("expires", [""])[0],
                                query.get("signature", [""])[0])  # fmt: skip
            await templates.receive_upload(template_id, files_hash, chunks())
        except UploadRefused as exc:
            status = 403 if exc.error_code == BAD else 400
            await _json(send, status, error_body(status, exc.message))
            return
        except LifecycleError as exc:
            await _json(send, status_of(exc), error_body(status_of(exc), exc.message))
            return
        await _json(send, 200, {})

    return app
