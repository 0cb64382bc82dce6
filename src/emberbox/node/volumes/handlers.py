"""The node's volume calls: ``node.Node`` volume messages in, :class:`NodeVolumes` calls out,
failures as the Connect codes the proto names (so the control plane answers the right status
without knowing the node's filesystem)."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from ..._connect.errors import Code, ConnectError
from ..._proto.node import node_pb2 as pb
from ...host.errors import HostError
from ...runtimes.base import CapabilityMissing
from . import contents
from .contents import ContentError, Owner
from .service import NodeVolumes, VolumeBusy, VolumeExists, VolumeMissing

Handler = Callable[[Any], Awaitable[Message]]

_BY_STATUS = {400: Code.INVALID_ARGUMENT, 403: Code.PERMISSION_DENIED, 404: Code.NOT_FOUND,
              409: Code.ALREADY_EXISTS, 507: Code.RESOURCE_EXHAUSTED}  # fmt: skip
# What a volume's filesystem may answer, as the caller's problem rather than the node's.
_BY_ERRNO = {
    errno.ENOSPC: Code.RESOURCE_EXHAUSTED, errno.EDQUOT: Code.RESOURCE_EXHAUSTED,
    errno.ENAMETOOLONG: Code.INVALID_ARGUMENT, errno.ENXIO: Code.INVALID_ARGUMENT,
    errno.ENOTDIR: Code.INVALID_ARGUMENT, errno.EISDIR: Code.INVALID_ARGUMENT,
    errno.ENOTEMPTY: Code.ALREADY_EXISTS, errno.EEXIST: Code.ALREADY_EXISTS,
    errno.ENOENT: Code.NOT_FOUND,
}  # fmt: skip


def volume_error(exc: Exception) -> ConnectError:
    if isinstance(exc, CapabilityMissing):
        return ConnectError(Code.UNIMPLEMENTED, str(exc))
    if isinstance(exc, ContentError):
        return ConnectError(_BY_STATUS.get(exc.status, Code.INTERNAL), exc.message)
    if isinstance(exc, VolumeMissing):
        return ConnectError(Code.NOT_FOUND, str(exc))
    if isinstance(exc, VolumeBusy):
        return ConnectError(Code.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, VolumeExists):
        return ConnectError(Code.ALREADY_EXISTS, str(exc))
    if isinstance(exc, HostError):
        return ConnectError(Code.UNAVAILABLE, str(exc))
    if isinstance(exc, PermissionError):
        return ConnectError(Code.PERMISSION_DENIED, f"not permitted: {exc.strerror}")
    if isinstance(exc, OSError):
        code = _BY_ERRNO.get(exc.errno or 0)
        if code is not None:
            return ConnectError(code, exc.strerror or str(exc))
        return ConnectError(Code.UNAVAILABLE, str(exc) or type(exc).__name__)
    if isinstance(exc, ValueError):
        return ConnectError(Code.INVALID_ARGUMENT, str(exc))
    raise exc


def _entry(d: dict[str, Any]) -> pb.VolumeEntry:
    return pb.VolumeEntry(
        name=d["name"], type=d["type"], path=d["path"], size=d["size"], mode=d["mode"],
        uid=d["uid"], gid=d["gid"], atime=d["atime"], mtime=d["mtime"], ctime=d["ctime"],
        target=d.get("target"),
    )  # fmt: skip


def _owner(o: pb.VolumeOwner) -> Owner:
    return Owner(
        o.uid if o.HasField("uid") else None,
        o.gid if o.HasField("gid") else None,
        o.mode if o.HasField("mode") else None,
    )


class VolumeHandlers:
    def __init__(self, volumes: Callable[[], NodeVolumes]) -> None:
        self._volumes = volumes  # raises where this node keeps no volumes

    @property
    def handlers(self) -> dict[str, tuple[type[Message], Handler]]:
        calls: dict[str, tuple[type[Message], Handler]] = {
            "CreateVolume": (pb.CreateVolumeRequest, self.create),
            "DeleteVolume": (pb.DeleteVolumeRequest, self.delete),
            "VolumeList": (pb.VolumeListRequest, self.list),
            "VolumeStat": (pb.VolumePathRequest, self.stat),
            "VolumeMakeDir": (pb.VolumeChangeRequest, self.make_dir),
            "VolumeUpdate": (pb.VolumeChangeRequest, self.update),
            "VolumeRemove": (pb.VolumePathRequest, self.remove),
            "VolumeRead": (pb.VolumeReadRequest, self.read),
            "VolumeWrite": (pb.VolumeWriteRequest, self.write),
        }
        return {
            f"/node.Node/{name}": (kind, self._guarded(fn)) for name, (kind, fn) in calls.items()
        }

    @staticmethod
    def _guarded(fn: Handler) -> Handler:
        async def call(request: Any) -> Message:
            try:
                return await fn(request)
            except (ContentError, VolumeMissing, VolumeBusy, OSError, ValueError, HostError) as exc:
                raise volume_error(exc) from exc

        return call

    async def create(self, r: pb.CreateVolumeRequest) -> pb.CreateVolumeResponse:
        await self._volumes().create(r.volume_id, r.size_mb)
        return pb.CreateVolumeResponse()

    async def delete(self, r: pb.DeleteVolumeRequest) -> pb.DeleteVolumeResponse:
        await self._volumes().delete(r.volume_id)
        return pb.DeleteVolumeResponse()

    async def list(self, r: pb.VolumeListRequest) -> pb.VolumeListResponse:
        found = await self._volumes().call(r.volume_id, contents.list_dir, r.path, r.depth)
        return pb.VolumeListResponse(entries=[_entry(e) for e in found])

    async def stat(self, r: pb.VolumePathRequest) -> pb.VolumeEntryResponse:
        found = await self._volumes().call(r.volume_id, contents.stat_path, r.path)
        return pb.VolumeEntryResponse(entry=_entry(found))

    async def make_dir(self, r: pb.VolumeChangeRequest) -> pb.VolumeEntryResponse:
        made = await self._volumes().call(r.volume_id, contents.make_dir, r.path,
                                          _owner(r.owner), r.parents)  # fmt: skip
        return pb.VolumeEntryResponse(entry=_entry(made))

    async def update(self, r: pb.VolumeChangeRequest) -> pb.VolumeEntryResponse:
        changed = await self._volumes().call(r.volume_id, contents.update, r.path, _owner(r.owner))
        return pb.VolumeEntryResponse(entry=_entry(changed))

    async def remove(self, r: pb.VolumePathRequest) -> pb.VolumeRemoveResponse:
        await self._volumes().call(r.volume_id, contents.remove, r.path)
        return pb.VolumeRemoveResponse()

    async def read(self, r: pb.VolumeReadRequest) -> pb.VolumeReadResponse:
        data, size = await self._volumes().read(r.volume_id, r.path, r.read_id, r.offset,
                                                r.length, r.done)  # fmt: skip
        return pb.VolumeReadResponse(data=data, size=size)

    async def write(self, r: pb.VolumeWriteRequest) -> pb.VolumeEntryResponse:
        written = await self._volumes().write(
            r.volume_id, r.path, r.write_id, r.offset, r.data, last=r.last, abort=r.abort,
            owner=_owner(r.owner), parents=r.parents,
        )  # fmt: skip
        return pb.VolumeEntryResponse(entry=_entry(written) if written else None)
