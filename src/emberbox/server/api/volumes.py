"""E2B's volume API: ``/volumes`` (team-scoped, API key) and the content API
``/volumecontent/{volumeID}/dir|path|file`` (the volume's bearer token; the SDKs send it to
``E2B_VOLUME_API_URL``, which is this server)."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.status import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from ..db.models import Volume
from ..lifecycle.errors import NotFound
from ..volumes import contents
from ..volumes.contents import ContentError, Owner
from ..volumes.service import VolumeService
from .deps import Caller
from .errors import ApiError
from .models import Error

CONTENT_PREFIX = "/volumecontent/"

router = APIRouter(tags=["volumes"])


def volumes(request: Request) -> VolumeService:
    svc = request.app.state.volumes
    assert isinstance(svc, VolumeService)
    return svc


Volumes = Annotated[VolumeService, Depends(volumes)]


class NewVolume(BaseModel):
    name: str


class VolumeInfo(BaseModel):
    volumeID: str
    name: str


class VolumeAndToken(VolumeInfo):
    token: str


class VolumeEntryStat(BaseModel):
    name: str
    type: Literal["directory", "file", "symlink", "unknown"]
    path: str
    size: int
    mode: int
    uid: int
    gid: int
    atime: dt.datetime
    mtime: dt.datetime
    ctime: dt.datetime
    target: str | None = None


class EntryMetadata(BaseModel):
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Error} for code in (400, 401, 429, 500, 501, *codes)}


def _with_token(row: Volume) -> VolumeAndToken:
    return VolumeAndToken(volumeID=row.id, name=row.name, token=row.token)


@router.post("/volumes", status_code=HTTP_201_CREATED, response_model=VolumeAndToken,
             responses=_errors(409), summary="Create a team volume")  # fmt: skip
async def create_volume(who: Caller, svc: Volumes, body: NewVolume) -> VolumeAndToken:
    return _with_token(await svc.create(who, body.name))


@router.get("/volumes", response_model=list[VolumeInfo], responses=_errors(),
            summary="The team's volumes")  # fmt: skip
async def list_volumes(who: Caller, svc: Volumes) -> list[VolumeInfo]:
    return [VolumeInfo(volumeID=v.id, name=v.name) for v in await svc.of_team(who)]


@router.get("/volumes/{volume_id}", response_model=VolumeAndToken, responses=_errors(404),
            summary="A team volume and its content token")  # fmt: skip
async def get_volume(who: Caller, svc: Volumes, volume_id: str) -> VolumeAndToken:
    return _with_token(await svc.get(who, volume_id))


@router.delete("/volumes/{volume_id}", status_code=HTTP_204_NO_CONTENT,
               responses=_errors(404, 409),
               summary="Delete a volume no sandbox mounts")  # fmt: skip
async def delete_volume(who: Caller, svc: Volumes, volume_id: str) -> Response:
    await svc.delete(who, volume_id)
    return Response(status_code=HTTP_204_NO_CONTENT)


# ---- content ---------------------------------------------------------------------------

Authorization = Annotated[str | None, Header()]
PathParam = Annotated[str, Query(max_length=4096)]


async def volume_root(
    request: Request, svc: Volumes, volume_id: str, authorization: Authorization = None
) -> Path:
    """The volume's directory for a caller holding its token. Wrong tokens draw from a bucket
    per client address, as wrong API keys do, so tokens cannot be guessed at speed."""
    try:
        return await svc.authorize(volume_id, authorization)
    except NotFound:
        client = request.client.host if request.client else "unknown"
        wait = request.app.state.volume_token_failures.take(client)
        if wait > 0:
            retry = {"Retry-After": str(max(1, math.ceil(wait)))}
            raise ApiError(429, "too many requests without a valid volume token",
                           headers=retry) from None  # fmt: skip
        raise


VolumeRoot = Annotated[Path, Depends(volume_root)]


# What the volume's filesystem may answer, as the caller's problem rather than ours.
_ERRNO_STATUS = {
    errno.ENOSPC: 507, errno.EDQUOT: 507, errno.ENAMETOOLONG: 400, errno.ENXIO: 400,
    errno.ENOTEMPTY: 409, errno.EEXIST: 409, errno.ENOTDIR: 400, errno.EISDIR: 400,
    errno.ENOENT: 404,
}  # fmt: skip


def _owner(uid: int | None, gid: int | None, mode: int | None) -> Owner:
    try:
        return Owner(uid, gid, mode)
    except ContentError as e:
        raise ApiError(e.status, e.message) from None


def new_entry(
    uid: int | None = None, gid: int | None = None, mode: int | None = None, force: bool = False
) -> tuple[Owner, bool]:
    """The query of a make-dir or an upload: the new entry's owner and mode, and whether its
    missing parents are made (``force``)."""
    return _owner(uid, gid, mode), force


NewEntry = Annotated[tuple[Owner, bool], Depends(new_entry)]


async def _run(fn: Any, *args: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args)
    except ContentError as e:
        raise ApiError(e.status, e.message) from None
    except PermissionError as e:
        raise ApiError(403, f"not permitted: {e.strerror}") from None
    except OSError as e:
        status = _ERRNO_STATUS.get(e.errno or 0)
        if status is None:
            raise
        raise ApiError(status, f"{e.strerror}") from None


@router.get(CONTENT_PREFIX + "{volume_id}/dir", response_model=list[VolumeEntryStat],
            responses=_errors(404), summary="List a volume directory")  # fmt: skip
async def list_dir(root: VolumeRoot, path: PathParam, depth: int = 1) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = await _run(contents.list_dir, root, path, depth)
    return out


@router.get(CONTENT_PREFIX + "{volume_id}/path", response_model=VolumeEntryStat,
            responses=_errors(404), summary="A volume entry's metadata")  # fmt: skip
async def stat_path(root: VolumeRoot, path: PathParam) -> dict[str, Any]:
    out: dict[str, Any] = await _run(contents.stat_path, root, path)
    return out


@router.patch(CONTENT_PREFIX + "{volume_id}/path", response_model=VolumeEntryStat,
              responses=_errors(404), summary="Change an entry's owner or mode")  # fmt: skip
async def update_path(
    root: VolumeRoot, path: PathParam, body: Annotated[EntryMetadata, Body()]
) -> dict[str, Any]:
    owner = _owner(body.uid, body.gid, body.mode)
    out: dict[str, Any] = await _run(contents.update, root, path, owner)
    return out


@router.delete(CONTENT_PREFIX + "{volume_id}/path", status_code=HTTP_204_NO_CONTENT,
               responses=_errors(404), summary="Remove a file or a directory tree")  # fmt: skip
async def remove_path(root: VolumeRoot, path: PathParam) -> Response:
    await _run(contents.remove, root, path)
    return Response(status_code=HTTP_204_NO_CONTENT)


@router.post(CONTENT_PREFIX + "{volume_id}/dir", status_code=HTTP_201_CREATED,
             response_model=VolumeEntryStat, responses=_errors(404, 409),
             summary="Make a directory (force: its parents too)")  # fmt: skip
async def make_dir(root: VolumeRoot, path: PathParam, entry: NewEntry) -> dict[str, Any]:
    out: dict[str, Any] = await _run(contents.make_dir, root, path, *entry)
    return out


@router.get(CONTENT_PREFIX + "{volume_id}/file", responses={**_errors(404), 200: {
    "content": {"application/octet-stream": {}}, "description": "The file's bytes"}},
    summary="Read a file")  # fmt: skip
async def read_file(root: VolumeRoot, path: PathParam) -> StreamingResponse:
    fd, size = await _run(contents.open_file, root, path)
    return StreamingResponse(contents.read_chunks(fd, size), media_type="application/octet-stream",
                             headers={"Content-Length": str(size)})  # fmt: skip


@router.put(CONTENT_PREFIX + "{volume_id}/file", status_code=HTTP_201_CREATED,
            response_model=VolumeEntryStat, responses=_errors(404, 409, 507),
            summary="Write a file (replaced whole; force: parents are made)")  # fmt: skip
async def write_file(
    request: Request, root: VolumeRoot, path: PathParam, entry: NewEntry
) -> dict[str, Any]:
    writer: contents.FileWriter = await _run(contents.FileWriter, root, path, *entry)
    try:
        async for chunk in request.stream():
            if chunk:
                await _run(writer.write, chunk)
        out: dict[str, Any] = await _run(writer.commit)
    except BaseException:
        await asyncio.shield(run_in_threadpool(writer.close))
        raise
    return out
