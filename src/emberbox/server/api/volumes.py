"""E2B's volume API: ``/volumes`` (team-scoped, API key) and the content API
``/volumecontent/{volumeID}/dir|path|file`` (the volume's bearer token; the SDKs send it to
``E2B_VOLUME_API_URL``, which is this server)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.responses import Response
from starlette.status import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from ..._connect.errors import Code
from ..._proto.node import node_pb2 as pb
from ...node.client import PIECE_BYTES, NodeError
from ...node.volumes.contents import MAX_DEPTH, ContentError, Owner
from ...node.volumes.service import IDLE_S
from ..db.models import Volume
from ..lifecycle.errors import NotFound
from ..volumes.service import VolumeService
from .deps import Caller
from .errors import ApiError, error_responses
from .models import RequestBody
from .route import ApiRoute

CONTENT_PREFIX = "/volumecontent/"

router = APIRouter(tags=["volumes"], route_class=ApiRoute)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Every volume route may also answer 501: a runtime without volumes."""
    return error_responses(501, *codes)


async def volumes(request: Request) -> VolumeService:
    svc = request.app.state.volumes
    assert isinstance(svc, VolumeService)
    return svc


Volumes = Annotated[VolumeService, Depends(volumes)]


class NewVolume(RequestBody):
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


class EntryMetadata(RequestBody):
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None


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
FLUSH_S = IDLE_S / 3  # an upload's bytes wait here at most this long: the node drops idle ones
T = TypeVar("T")


async def authorized_volume(
    request: Request, svc: Volumes, volume_id: str, authorization: Authorization = None
) -> str:
    """The volume, for a caller holding its token. Wrong tokens draw from a bucket per client
    address, as wrong API keys do, so tokens cannot be guessed at speed."""
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


VolumeId = Annotated[str, Depends(authorized_volume)]

# The node's answers (node.proto's volume calls), as the caller's problem or ours.
_STATUS = {
    Code.NOT_FOUND: 404, Code.INVALID_ARGUMENT: 400, Code.ALREADY_EXISTS: 409,
    Code.FAILED_PRECONDITION: 409, Code.RESOURCE_EXHAUSTED: 507, Code.PERMISSION_DENIED: 403,
    Code.UNAVAILABLE: 503, Code.UNIMPLEMENTED: 501,
}  # fmt: skip


async def _node(call: Awaitable[T]) -> T:
    try:
        return await call
    except NodeError as e:
        raise ApiError(_STATUS.get(e.code, 502), e.message) from None


def _owner(uid: int | None, gid: int | None, mode: int | None) -> pb.VolumeOwner:
    try:
        Owner(uid, gid, mode)  # the ranges, checked before they are encoded
    except ContentError as e:
        raise ApiError(e.status, e.message) from None
    return pb.VolumeOwner(uid=uid, gid=gid, mode=mode)


async def new_entry(
    uid: int | None = None, gid: int | None = None, mode: int | None = None, force: bool = False
) -> tuple[pb.VolumeOwner, bool]:
    """The query of a make-dir or an upload: the new entry's owner and mode, and whether its
    missing parents are made (``force``)."""
    return _owner(uid, gid, mode), force


NewEntry = Annotated[tuple[pb.VolumeOwner, bool], Depends(new_entry)]


def _time(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def _entry(e: pb.VolumeEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": e.name, "type": e.type, "path": e.path, "size": e.size, "mode": e.mode,
        "uid": e.uid, "gid": e.gid, "atime": _time(e.atime), "mtime": _time(e.mtime),
        "ctime": _time(e.ctime),
    }  # fmt: skip
    if e.HasField("target"):
        out["target"] = e.target
    return out


@router.get(CONTENT_PREFIX + "{volume_id}/dir", response_model=list[VolumeEntryStat],
            responses=_errors(404), summary="List a volume directory")  # fmt: skip
async def list_dir(
    svc: Volumes, vid: VolumeId, path: PathParam, depth: int = 1
) -> list[dict[str, Any]]:
    if not 1 <= depth <= MAX_DEPTH:
        raise ApiError(400, f"depth must be between 1 and {MAX_DEPTH}")
    return [_entry(e) for e in await _node(svc.node.volume_list(vid, path, depth))]


@router.get(CONTENT_PREFIX + "{volume_id}/path", response_model=VolumeEntryStat,
            responses=_errors(404), summary="A volume entry's metadata")  # fmt: skip
async def stat_path(svc: Volumes, vid: VolumeId, path: PathParam) -> dict[str, Any]:
    return _entry(await _node(svc.node.volume_stat(vid, path)))


@router.patch(CONTENT_PREFIX + "{volume_id}/path", response_model=VolumeEntryStat,
              responses=_errors(404), summary="Change an entry's owner or mode")  # fmt: skip
async def update_path(
    svc: Volumes, vid: VolumeId, path: PathParam, body: Annotated[EntryMetadata, Body()]
) -> dict[str, Any]:
    change = pb.VolumeChangeRequest(volume_id=vid, path=path,
                                    owner=_owner(body.uid, body.gid, body.mode))  # fmt: skip
    return _entry(await _node(svc.node.volume_update(change)))


@router.delete(CONTENT_PREFIX + "{volume_id}/path", status_code=HTTP_204_NO_CONTENT,
               responses=_errors(404), summary="Remove a file or a directory tree")  # fmt: skip
async def remove_path(svc: Volumes, vid: VolumeId, path: PathParam) -> Response:
    await _node(svc.node.volume_remove(vid, path))
    return Response(status_code=HTTP_204_NO_CONTENT)


@router.post(CONTENT_PREFIX + "{volume_id}/dir", status_code=HTTP_201_CREATED,
             response_model=VolumeEntryStat, responses=_errors(404, 409),
             summary="Make a directory (force: its parents too)")  # fmt: skip
async def make_dir(svc: Volumes, vid: VolumeId, path: PathParam, entry: NewEntry) -> dict[str, Any]:
    owner, parents = entry
    change = pb.VolumeChangeRequest(volume_id=vid, path=path, owner=owner, parents=parents)
    return _entry(await _node(svc.node.volume_make_dir(change)))


@router.get(CONTENT_PREFIX + "{volume_id}/file", responses={**_errors(404), 200: {
    "content": {"application/octet-stream": {}}, "description": "The file's bytes"}},
    summary="Read a file")  # fmt: skip
async def read_file(svc: Volumes, vid: VolumeId, path: PathParam) -> StreamingResponse:
    """The file's first ``size`` bytes (what Content-Length announced, though a sandbox may
    be appending), read from the node a chunk at a time from the file it opened first."""
    read = pb.VolumeReadRequest(volume_id=vid, path=path, read_id=secrets.token_hex(8),
                                length=PIECE_BYTES)  # fmt: skip
    first = await _node(svc.node.volume_read(read))
    size = first.size

    async def rest() -> AsyncIterator[bytes]:
        data = first.data
        try:
            while data:
                yield data
                read.offset += len(data)
                if read.offset >= size:
                    return
                data = (await svc.node.volume_read(read)).data
        finally:
            if read.offset < size:  # the client left early: the node closes the file now
                read.done = True
                with contextlib.suppress(NodeError):
                    await asyncio.shield(svc.node.volume_read(read))

    return StreamingResponse(rest(), media_type="application/octet-stream",
                             headers={"Content-Length": str(size)})  # fmt: skip


@router.put(CONTENT_PREFIX + "{volume_id}/file", status_code=HTTP_201_CREATED,
            response_model=VolumeEntryStat, responses=_errors(404, 409, 507),
            summary="Write a file (replaced whole; force: parents are made)")  # fmt: skip
async def write_file(
    request: Request, svc: Volumes, vid: VolumeId, path: PathParam, entry: NewEntry
) -> dict[str, Any]:
    """Sent to the node in chunks under one write id; the target is replaced only at the end."""
    owner, parents = entry
    write = pb.VolumeWriteRequest(volume_id=vid, path=path, write_id=secrets.token_hex(8),
                                  owner=owner, parents=parents)  # fmt: skip

    async def send(data: bytes, last: bool) -> pb.VolumeEntryResponse:
        write.data, write.last = data, last
        answer = await _node(svc.node.volume_write(write))
        write.offset += len(data)
        return answer

    pending, sent_at = bytearray(), time.monotonic()
    try:
        async for chunk in request.stream():
            pending += chunk
            # A slow client's bytes still reach the node before it drops an idle upload.
            while len(pending) >= PIECE_BYTES or (pending and time.monotonic() - sent_at > FLUSH_S):
                await send(bytes(pending[:PIECE_BYTES]), False)
                del pending[:PIECE_BYTES]
                sent_at = time.monotonic()
        done = await send(bytes(pending), True)
    except BaseException:
        write.abort, write.data = True, b""
        with contextlib.suppress(NodeError, ApiError):
            await asyncio.shield(svc.node.volume_write(write))
        raise
    return _entry(done.entry)
