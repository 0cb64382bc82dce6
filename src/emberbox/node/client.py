"""How the control plane reaches a node: one typed client over the ``node.Node`` messages.

:class:`EmbeddedNode` runs the node inside the server process (the default: nothing else to
start); :class:`RemoteNode` talks to ``emberbox node`` over HTTP (Connect protocol, binary
protobuf codec).
Both pass the same request and response messages and turn Connect codes into the same
:class:`NodeError` subclasses, so the control plane cannot tell them apart.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import httpx
from google.protobuf.message import Message

from .._connect.codec import decode_proto
from .._connect.errors import Code, ConnectError
from .._proto.node import node_pb2 as pb
from ..runtimes.base import FILES_TIMEOUT_S, Runtime
from .builds import NodeBuilds
from .offload import OffloadSettings
from .orchestrator import Orchestrator
from .pool import PoolSettings
from .service import NodeService
from .volumes.service import NodeVolumes

M = TypeVar("M", bound=Message)
# File bytes per node call that carries them (PutBuildFile, VolumeRead, VolumeWrite): every
# request stays under the node app's 1 MiB limit, even in JSON's base64.
PIECE_BYTES = 512 << 10


class NodeError(Exception):
    """A node refused or failed an operation; ``message`` is safe to show to API callers."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NodeSandboxNotFound(NodeError):
    """The node holds no such sandbox."""


class NodeUnsupported(NodeError):
    """The node's runtime cannot do this (pause on a runtime without it, snapshots, ...)."""


class NodeBadRequest(NodeError):
    """The request is malformed or conflicts with what exists (bad id, duplicate id)."""


class NodeConflict(NodeError):
    """The sandbox is not in a state that allows this (paused, while a snapshot was asked)."""


class NodeFull(NodeError):
    """The node has no room for another sandbox."""


class NodeUnavailable(NodeError):
    """The node could not be reached, or failed inside."""

    @property
    def unreached(self) -> bool:
        """The call may never have got to the node, or its answer was lost on the way: what
        the node did is unknown (not a failure it reported)."""
        return self.code is Code.UNAVAILABLE


_BY_CODE: dict[Code, type[NodeError]] = {
    Code.NOT_FOUND: NodeSandboxNotFound,
    Code.UNIMPLEMENTED: NodeUnsupported,
    Code.INVALID_ARGUMENT: NodeBadRequest,
    Code.ALREADY_EXISTS: NodeBadRequest,
    Code.FAILED_PRECONDITION: NodeConflict,
    Code.RESOURCE_EXHAUSTED: NodeFull,
}


def node_error(err: ConnectError) -> NodeError:
    return _BY_CODE.get(err.code, NodeUnavailable)(err.code, err.message)


class NodeClient(abc.ABC):
    """Typed calls of the ``node.Node`` service; subclasses only move messages."""

    @abc.abstractmethod
    async def _call(self, method: str, request: Message, response_type: type[M]) -> M: ...

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Get ready (start the embedded node, or check the remote one answers)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients; sandboxes keep running."""

    async def info(self) -> pb.InfoResponse:
        return await self._call("Info", pb.InfoRequest(), pb.InfoResponse)

    async def create(self, spec: pb.SandboxSpec) -> pb.Sandbox:
        return (await self._call("Create", pb.CreateRequest(spec=spec), pb.CreateResponse)).sandbox

    async def kill(self, sandbox_id: str) -> bool:
        request = pb.KillRequest(sandbox_id=sandbox_id)
        return (await self._call("Kill", request, pb.KillResponse)).released

    async def list(self) -> pb.ListResponse:
        return await self._call("List", pb.ListRequest(), pb.ListResponse)

    async def stats(self, sandbox_id: str) -> pb.StatsResponse:
        return await self._call("Stats", pb.StatsRequest(sandbox_id=sandbox_id), pb.StatsResponse)

    async def pause(self, sandbox_id: str, memory: bool = True) -> int:
        """Returns the disk what the paused sandbox saved takes (only its files without
        ``memory``)."""
        request = pb.PauseRequest(sandbox_id=sandbox_id, filesystem_only=not memory)
        return (await self._call("Pause", request, pb.PauseResponse)).size_bytes

    async def checkpoint(
        self, sandbox_id: str, snapshot_id: str, memory: bool = True
    ) -> pb.Snapshot:
        """Without ``memory`` only the files the sandbox changed are kept."""
        request = pb.CheckpointRequest(sandbox_id=sandbox_id, snapshot_id=snapshot_id,
                                       filesystem_only=not memory)  # fmt: skip
        return (await self._call("Checkpoint", request, pb.CheckpointResponse)).snapshot

    async def resume(
        self, sandbox_id: str, access_token: str, memory: bool = True
    ) -> pb.ResumeResponse:
        """``access_token`` is for a sandbox that boots afresh (``memory`` False, or paused
        without it): its envd is handed it as at create."""
        request = pb.ResumeRequest(sandbox_id=sandbox_id, reboot=not memory,
                                   access_token=access_token)  # fmt: skip
        return await self._call("Resume", request, pb.ResumeResponse)

    async def restore(self, sandbox_id: str, snapshot: pb.Snapshot) -> pb.Sandbox:
        request = pb.RestoreRequest(sandbox_id=sandbox_id, snapshot=snapshot)
        return (await self._call("Restore", request, pb.RestoreResponse)).sandbox

    async def delete_snapshot(self, snapshot: pb.Snapshot) -> None:
        request = pb.DeleteSnapshotRequest(snapshot=snapshot)
        await self._call("DeleteSnapshot", request, pb.DeleteSnapshotResponse)

    async def list_snapshots(self) -> builtins.list[pb.Snapshot]:
        response = await self._call("ListSnapshots", pb.ListSnapshotsRequest(),
                                    pb.ListSnapshotsResponse)  # fmt: skip
        return builtins.list(response.snapshots)

    async def update_network(self, request: pb.UpdateNetworkRequest) -> None:
        await self._call("UpdateNetwork", request, pb.UpdateNetworkResponse)

    async def egress_log(self, sandbox_id: str, after: int, limit: int) -> pb.EgressLogResponse:
        request = pb.EgressLogRequest(sandbox_id=sandbox_id, after=after, limit=limit)
        return await self._call("EgressLog", request, pb.EgressLogResponse)

    async def build_files(self, template_id: str, hashes: Sequence[str]) -> tuple[str, ...]:
        """The hashes of those files the node does not hold yet."""
        request = pb.BuildFilesRequest(template_id=template_id, files_hashes=hashes)
        return tuple((await self._call("BuildFiles", request, pb.BuildFilesResponse)).missing)

    async def put_build_file(self, request: pb.PutBuildFileRequest) -> None:
        await self._call("PutBuildFile", request, pb.PutBuildFileResponse)

    async def start_build(self, request: pb.StartBuildRequest) -> None:
        await self._call("StartBuild", request, pb.StartBuildResponse)

    async def build_status(self, build_id: str, from_seq: int) -> pb.BuildStatusResponse:
        request = pb.BuildStatusRequest(build_id=build_id, from_seq=from_seq)
        return await self._call("BuildStatus", request, pb.BuildStatusResponse)

    async def cancel_build(self, build_id: str) -> None:
        request = pb.CancelBuildRequest(build_id=build_id)
        await self._call("CancelBuild", request, pb.CancelBuildResponse)

    async def delete_template(self, template_id: str, store_names: Sequence[str]) -> None:
        request = pb.DeleteTemplateRequest(template_id=template_id, store_names=store_names)
        await self._call("DeleteTemplate", request, pb.DeleteTemplateResponse)

    async def create_volume(self, volume_id: str, size_mb: int) -> None:
        request = pb.CreateVolumeRequest(volume_id=volume_id, size_mb=size_mb)
        await self._call("CreateVolume", request, pb.CreateVolumeResponse)

    async def delete_volume(self, volume_id: str) -> None:
        request = pb.DeleteVolumeRequest(volume_id=volume_id)
        await self._call("DeleteVolume", request, pb.DeleteVolumeResponse)

    async def volume_list(self, volume_id: str, path: str, depth: int) -> Sequence[pb.VolumeEntry]:
        request = pb.VolumeListRequest(volume_id=volume_id, path=path, depth=depth)
        return tuple((await self._call("VolumeList", request, pb.VolumeListResponse)).entries)

    async def volume_stat(self, volume_id: str, path: str) -> pb.VolumeEntry:
        request = pb.VolumePathRequest(volume_id=volume_id, path=path)
        return (await self._call("VolumeStat", request, pb.VolumeEntryResponse)).entry

    async def volume_make_dir(self, request: pb.VolumeChangeRequest) -> pb.VolumeEntry:
        return (await self._call("VolumeMakeDir", request, pb.VolumeEntryResponse)).entry

    async def volume_update(self, request: pb.VolumeChangeRequest) -> pb.VolumeEntry:
        return (await self._call("VolumeUpdate", request, pb.VolumeEntryResponse)).entry

    async def volume_remove(self, volume_id: str, path: str) -> None:
        request = pb.VolumePathRequest(volume_id=volume_id, path=path)
        await self._call("VolumeRemove", request, pb.VolumeRemoveResponse)

    async def volume_read(self, request: pb.VolumeReadRequest) -> pb.VolumeReadResponse:
        return await self._call("VolumeRead", request, pb.VolumeReadResponse)

    async def volume_write(self, request: pb.VolumeWriteRequest) -> pb.VolumeEntryResponse:
        return await self._call("VolumeWrite", request, pb.VolumeEntryResponse)

    async def claim(self, spec: pb.SandboxSpec) -> pb.ClaimResponse:
        """A pooled sandbox fitting ``spec``, handed over and running (``sandbox`` unset if
        none), with the access token its envd holds."""
        return await self._call("Claim", pb.ClaimRequest(spec=spec), pb.ClaimResponse)


class EmbeddedNode(NodeClient):
    """The node inside this process: its orchestrator starts and stops with the server."""

    def __init__(
        self,
        runtime: Runtime,
        state_dir: Path,
        *,
        pool: PoolSettings | None = None,
        offload: OffloadSettings | None = None,
        builds: NodeBuilds | None = None,
        data_dir: Path | None = None,
        **orchestrator_options: float,
    ) -> None:
        """``data_dir``: where the node keeps volumes (none without it)."""
        self.orchestrator = Orchestrator(
            runtime, state_dir, pool=pool, offload=offload, **orchestrator_options
        )
        self.builds = builds
        self.volumes = (
            NodeVolumes.for_runtime(data_dir, runtime, self.orchestrator.volumes_in_use)
            if data_dir is not None
            else None
        )
        self.service = NodeService(self.orchestrator, builds=builds, volumes=self.volumes)

    async def start(self) -> None:
        await self.service.start()

    async def close(self) -> None:
        await self.service.close()

    async def _call(self, method: str, request: Message, response_type: type[M]) -> M:
        try:
            response = await self.service.call(f"/node.Node/{method}", request)
        except ConnectError as err:
            raise node_error(err) from None
        assert isinstance(response, response_type)
        return response


# Calls that may save a sandbox's files or boot it from them (a rollback whose restored envd
# does not answer is saved again, its files if its memory cannot be).
_FILES_CALLS = frozenset({"Pause", "Resume", "Checkpoint", "Create", "Restore"})


class RemoteNode(NodeClient):
    """A node served by ``emberbox node`` at ``url``; ``token`` is its shared secret."""

    def __init__(self, url: str, token: str = "", timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(timeout=timeout_s, headers=headers, trust_env=False)

    async def start(self) -> None:
        await self.info()

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, request: Message, response_type: type[M]) -> M:
        # A call that may read a sandbox's files out and boot it from them waits that long.
        slow = 2 * FILES_TIMEOUT_S + 120 if method in _FILES_CALLS else None
        try:
            response = await self._http.post(
                f"{self.url}/node.Node/{method}",
                content=request.SerializeToString(),
                headers={"Content-Type": "application/proto"},
                timeout=slow if slow is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise NodeUnavailable(Code.UNAVAILABLE, f"node at {self.url}: {exc}") from exc
        if response.status_code != 200:
            raise node_error(ConnectError.from_http(response.status_code, response.content))
        try:
            return decode_proto(response.content, response_type)
        except ConnectError as err:
            raise NodeUnavailable(Code.INTERNAL, f"node sent an unreadable answer: {err}") from err
