"""The node's RPC handlers: ``node.Node`` messages in, messages out, errors as Connect codes.

Both ways of reaching a node end here: ``emberbox node`` serves these handlers over HTTP
(``node/app.py``) and ``emberbox server`` calls them in-process (``EmbeddedNode``), with the
same messages, so the in-process default exercises the very contract a remote node speaks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf.message import Message

from .._connect.errors import Code, ConnectError
from .._proto.node import node_pb2 as pb
from ..egress import (
    EgressProxy,
    HeaderRule,
    header_rules_from,
    parse_egress_proxy,
    rules_for,
)
from ..host.egress_audit import EgressEvent
from ..host.errors import HostError, HostExhausted
from ..runtimes.base import (
    CapabilityMissing,
    CapacityExhausted,
    NetworkPolicy,
    Runtime,
    RuntimeError_,
    SandboxGone,
    SandboxNotRunning,
    SandboxSpec,
    SnapshotRef,
    UnknownTemplate,
    VolumeMount,
    check_mount_path,
)
from ..templates.oci import Credentials
from ..vocabulary import ENVD_VERSION, InvalidSandboxId, check_sandbox_id
from .builds import (
    BuildOrder,
    BuildParentMissing,
    BuildQueueFull,
    BuildUnknown,
    NodeBuilds,
)
from .orchestrator import (
    BootFailed,
    Orchestrator,
    RecoveryReport,
    SandboxExists,
    SandboxNotFound,
)
from .records import SandboxRecord
from .volumes.handlers import VolumeHandlers
from .volumes.service import NodeVolumes, VolumeMissing

log = logging.getLogger("emberbox.node")

Handler = Callable[[Any], Awaitable[Message]]


def _sandbox(record: SandboxRecord) -> pb.Sandbox:
    status = pb.SANDBOX_STATUS_PAUSED if record.state == "paused" else pb.SANDBOX_STATUS_RUNNING
    return pb.Sandbox(
        sandbox_id=record.sandbox_id,
        template_id=record.template_id,
        envd_url=record.envd_url,
        host=record.host,
        envd_version=record.envd_version or ENVD_VERSION,
        status=status,
        paused_bytes=record.paused_bytes if record.state == "paused" else 0,
        files_only=record.state == "paused" and not record.kept_memory,
    )


def _snapshot_ref(snap: pb.Snapshot) -> SnapshotRef:
    check_sandbox_id(snap.snapshot_id)  # snapshot ids name directories, like sandbox ids
    return SnapshotRef(snap.snapshot_id, snap.runtime, snap.path, snap.template_id,
                       memory=not snap.filesystem_only)  # fmt: skip


def _snapshot_message(ref: SnapshotRef) -> pb.Snapshot:
    return pb.Snapshot(snapshot_id=ref.snapshot_id, runtime=ref.runtime, path=ref.path,
                       template_id=ref.template_id, size_bytes=ref.size_bytes,
                       filesystem_only=not ref.memory)  # fmt: skip


def _spec(s: pb.SandboxSpec) -> SandboxSpec:
    snapshot = _snapshot_ref(s.snapshot) if s.HasField("snapshot") else None
    return SandboxSpec(
        snapshot=snapshot,
        sandbox_id=s.sandbox_id,
        template_id=s.template_id,
        cpu_count=s.cpu_count,
        memory_mb=s.memory_mb,
        disk_mb=s.disk_mb,
        envs=dict(s.env_vars),
        network=_policy(
            s.allow_internet,
            s.allow_out,
            s.deny_out,
            s.header_rules,
            s.egress_proxy if s.HasField("egress_proxy") else None,
        ),
    )


def _policy(
    allow_internet: bool,
    allow_out: Sequence[str],
    deny_out: Sequence[str],
    header_rules: Sequence[pb.HeaderRule] = (),
    proxy: pb.EgressProxy | None = None,
) -> NetworkPolicy:
    """Checked here too (``InvalidRules`` is a ValueError: INVALID_ARGUMENT): node messages
    may come from any client."""
    rewrites = header_rules_from((r.domain, [(h.name, h.value) for h in r.headers])
                                 for r in header_rules if not r.unresolved)  # fmt: skip
    # A rule whose secret is gone keeps its domain, without values: its requests are refused.
    rewrites += tuple(
        HeaderRule(r.domain.lower().rstrip("."), headers=None) for r in header_rules if r.unresolved
    )
    policy = NetworkPolicy(allow_internet, tuple(allow_out), tuple(deny_out), rewrites,
                           _proxy(proxy) if proxy is not None else None)  # fmt: skip
    rules_for(policy.allow_out, policy.deny_out, policy.allow_internet)
    return policy


def _egress_record(r: EgressEvent) -> pb.EgressRecord:
    return pb.EgressRecord(
        seq=r.seq, at=r.at, ended=r.ended, protocol=r.protocol, name=r.name, ip=r.ip,
        port=r.port, method=r.method, path=r.path, bytes_out=r.bytes_out, bytes_in=r.bytes_in,
        verdict=r.verdict, rule=r.rule,
    )  # fmt: skip


def _proxy(p: pb.EgressProxy) -> EgressProxy | None:
    """Checked as the API checks it (the same parser)."""
    raw: dict[str, object] = {"address": f"{p.host}:{p.port}"}
    if p.username:
        raw["username"] = p.username
    if p.password:
        raw["password"] = p.password
    return parse_egress_proxy(raw)


def _connect_error(exc: Exception) -> ConnectError:
    """Domain failures below the node, as the codes its clients map back to domain errors."""
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, SandboxNotFound):  # (its message is the id)
        return ConnectError(Code.NOT_FOUND, f"sandbox {exc} not found on this node")
    if isinstance(exc, SandboxGone):  # (a sentence of its own)
        return ConnectError(Code.NOT_FOUND, str(exc))
    if isinstance(exc, UnknownTemplate | BuildParentMissing | BuildUnknown | VolumeMissing):
        return ConnectError(Code.NOT_FOUND, str(exc))
    if isinstance(exc, SandboxNotRunning):
        return ConnectError(Code.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, SandboxExists):
        return ConnectError(Code.ALREADY_EXISTS, str(exc))
    if isinstance(exc, CapabilityMissing):
        return ConnectError(Code.UNIMPLEMENTED, str(exc))
    if isinstance(exc, CapacityExhausted | HostExhausted | BuildQueueFull):
        return ConnectError(Code.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, InvalidSandboxId | ValueError):
        return ConnectError(Code.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, BootFailed | RuntimeError_ | HostError | OSError):
        return ConnectError(Code.INTERNAL, str(exc) or type(exc).__name__)
    log.exception("node handler failed", exc_info=exc)
    return ConnectError(Code.INTERNAL, str(exc) or type(exc).__name__)


def _check_ids(request: Message) -> None:
    """Every sandbox id that enters the node is a valid one before anything uses it (ids name
    host paths, namespaces and cgroups)."""
    if isinstance(request, pb.ClaimRequest):
        return  # a claim names no sandbox: the node picks one
    target = request.spec if isinstance(request, pb.CreateRequest) else request
    if "sandbox_id" in target.DESCRIPTOR.fields_by_name:
        check_sandbox_id(getattr(target, "sandbox_id"))  # noqa: B009 - any message type


class NodeService:
    """Serves one :class:`Orchestrator`; ``handlers`` maps ``/node.Node/<Method>`` to a
    coroutine taking the request message and returning the response message."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        node_id: str | None = None,
        builds: NodeBuilds | None = None,
        volumes: NodeVolumes | None = None,
    ) -> None:
        self.orchestrator = orchestrator
        self._builds = builds
        self._volumes = volumes
        self.node_id = node_id or socket.gethostname()
        self.boot_id = secrets.token_hex(8)
        self.handlers: dict[str, tuple[type[Message], Handler]] = {
            "/node.Node/Info": (pb.InfoRequest, self.info),
            "/node.Node/Create": (pb.CreateRequest, self.create),
            "/node.Node/Kill": (pb.KillRequest, self.kill),
            "/node.Node/List": (pb.ListRequest, self.list),
            "/node.Node/Stats": (pb.StatsRequest, self.stats),
            "/node.Node/Pause": (pb.PauseRequest, self.pause),
            "/node.Node/Resume": (pb.ResumeRequest, self.resume),
            "/node.Node/Checkpoint": (pb.CheckpointRequest, self.checkpoint),
            "/node.Node/Restore": (pb.RestoreRequest, self.restore),
            "/node.Node/DeleteSnapshot": (pb.DeleteSnapshotRequest, self.delete_snapshot),
            "/node.Node/ListSnapshots": (pb.ListSnapshotsRequest, self.list_snapshots),
            "/node.Node/Claim": (pb.ClaimRequest, self.claim),
            "/node.Node/UpdateNetwork": (pb.UpdateNetworkRequest, self.update_network),
            "/node.Node/EgressLog": (pb.EgressLogRequest, self.egress_log),
            "/node.Node/BuildFiles": (pb.BuildFilesRequest, self.build_files),
            "/node.Node/PutBuildFile": (pb.PutBuildFileRequest, self.put_build_file),
            "/node.Node/StartBuild": (pb.StartBuildRequest, self.start_build),
            "/node.Node/BuildStatus": (pb.BuildStatusRequest, self.build_status),
            "/node.Node/CancelBuild": (pb.CancelBuildRequest, self.cancel_build),
            "/node.Node/DeleteTemplate": (pb.DeleteTemplateRequest, self.delete_template),
            **VolumeHandlers(lambda: self.volumes).handlers,
        }

    @property
    def runtime(self) -> Runtime:
        return self.orchestrator.runtime

    async def start(self) -> RecoveryReport:
        """Recover the sandboxes a previous node left, then take builds."""
        report = await self.orchestrator.start()
        if self._builds is not None:
            self._builds.start()
        return report

    async def close(self) -> None:
        """Stop builds, unmount idle volumes, stop the orchestrator; sandboxes keep running."""
        if self._builds is not None:
            await self._builds.close()
        if self._volumes is not None:
            await self._volumes.close()
        await self.orchestrator.close()

    async def call(self, path: str, request: Message) -> Message:
        """Run one handler; every failure leaves as a :class:`ConnectError`."""
        entry = self.handlers.get(path)
        if entry is None:
            raise ConnectError(Code.UNIMPLEMENTED, f"no such node method {path}")
        try:
            _check_ids(request)
            return await entry[1](request)
        except Exception as exc:
            raise _connect_error(exc) from exc

    async def info(self, request: pb.InfoRequest) -> pb.InfoResponse:
        caps = self.runtime.capabilities
        return pb.InfoResponse(
            node_id=self.node_id,
            runtime=self.runtime.name,
            envd_version=ENVD_VERSION,
            capabilities=pb.Capabilities(
                pause=caps.pause,
                snapshot=caps.snapshot,
                fork=caps.fork,
                egress_rules=caps.egress_rules,
                header_rules=caps.header_rules,
                egress_proxy=caps.egress_proxy,
                no_internet=caps.no_internet,
                isolation=self.runtime.isolation,
                builds=self._builds is not None,
                volumes=self._volumes is not None,
                filesystem_pause=caps.filesystem_pause,
            ),
            pools=[
                pb.PoolStatus(
                    template_id=p.key.template_id,
                    cpu_count=p.key.cpu_count,
                    memory_mb=p.key.memory_mb,
                    disk_mb=p.key.disk_mb,
                    ready=p.ready,
                    target=p.target,
                )
                for p in self.orchestrator.pool.status()
            ],
        )

    def _check_proxy(self, policy: NetworkPolicy) -> None:
        if policy.proxy is not None and not self.runtime.capabilities.egress_proxy:
            raise CapabilityMissing(f"{self.runtime.name} cannot tunnel through an egressProxy")

    async def create(self, request: pb.CreateRequest) -> pb.CreateResponse:
        spec = _spec(request.spec)
        self._check_proxy(spec.network)
        s = request.spec
        previous = s.snapshot.access_token if spec.snapshot is not None else ""
        if not s.volume_mounts:
            record = await self.orchestrator.create(spec, s.access_token, previous_token=previous)
            return pb.CreateResponse(sandbox=_sandbox(record))
        # The volumes are mounted and in use until the sandbox's record names them.
        ids = [v.volume_id for v in s.volume_mounts]
        async with self.volumes.using(ids) as roots:
            mounts = tuple(VolumeMount(str(root), check_mount_path(v.path), v.volume_id)
                           for root, v in zip(roots, s.volume_mounts, strict=True))  # fmt: skip
            spec = dataclasses.replace(spec, volumes=mounts)
            record = await self.orchestrator.create(spec, s.access_token, previous_token=previous)
        return pb.CreateResponse(sandbox=_sandbox(record))

    async def claim(self, request: pb.ClaimRequest) -> pb.ClaimResponse:
        if request.spec.volume_mounts:  # mounted as a sandbox starts: a pooled one has none
            return pb.ClaimResponse()
        claimed = await self.orchestrator.claim(_spec(request.spec))
        if claimed is None:
            return pb.ClaimResponse()
        record, token = claimed
        return pb.ClaimResponse(sandbox=_sandbox(record), access_token=token)

    async def kill(self, request: pb.KillRequest) -> pb.KillResponse:
        return pb.KillResponse(released=await self.orchestrator.kill(request.sandbox_id))

    async def list(self, request: pb.ListRequest) -> pb.ListResponse:
        return pb.ListResponse(
            sandboxes=[_sandbox(r) for r in self.orchestrator.list()],
            ended=[
                pb.EndedSandbox(sandbox_id=i, reason=why)
                for i, why in self.orchestrator.ended.items()
            ],
            boot_id=self.boot_id,
        )

    async def stats(self, request: pb.StatsRequest) -> pb.StatsResponse:
        st = await self.orchestrator.stats(request.sandbox_id)
        return pb.StatsResponse(
            cpu_count=st.cpu_count,
            cpu_used_pct=st.cpu_used_pct,
            mem_used=st.mem_used,
            mem_total=st.mem_total,
            disk_used=st.disk_used,
            disk_total=st.disk_total,
        )

    async def pause(self, request: pb.PauseRequest) -> pb.PauseResponse:
        size = await self.orchestrator.pause(request.sandbox_id, memory=not request.filesystem_only)
        return pb.PauseResponse(size_bytes=size)

    async def checkpoint(self, request: pb.CheckpointRequest) -> pb.CheckpointResponse:
        ref = await self.orchestrator.checkpoint(
            request.sandbox_id, request.snapshot_id, memory=not request.filesystem_only
        )
        return pb.CheckpointResponse(snapshot=_snapshot_message(ref))

    async def restore(self, request: pb.RestoreRequest) -> pb.RestoreResponse:
        snapshot = _snapshot_ref(request.snapshot)
        record = await self.orchestrator.restore(request.sandbox_id, snapshot)
        return pb.RestoreResponse(sandbox=_sandbox(record))

    async def delete_snapshot(self, request: pb.DeleteSnapshotRequest) -> pb.DeleteSnapshotResponse:
        await self.runtime.delete_snapshot(_snapshot_ref(request.snapshot))
        return pb.DeleteSnapshotResponse()

    async def list_snapshots(self, request: pb.ListSnapshotsRequest) -> pb.ListSnapshotsResponse:
        found = await self.runtime.snapshots()
        return pb.ListSnapshotsResponse(snapshots=[_snapshot_message(ref) for ref in found])

    async def update_network(self, request: pb.UpdateNetworkRequest) -> pb.UpdateNetworkResponse:
        """Straight to the runtime, which serialises it with the sandbox's other host work."""
        policy = _policy(
            request.allow_internet, request.allow_out, request.deny_out, request.header_rules,
            request.egress_proxy if request.HasField("egress_proxy") else None,
        )  # fmt: skip
        self._check_proxy(policy)
        if not self.orchestrator.holds(request.sandbox_id):
            raise SandboxNotFound(request.sandbox_id)
        # The sandbox trusts the gateway before it intercepts anything (no token: rules sent
        # again after a restart, to a sandbox that trusts it already).
        if policy.rewrites and request.access_token:
            await self.orchestrator.trust_egress_ca(request.sandbox_id, request.access_token)
        await self.runtime.update_network(request.sandbox_id, policy)
        return pb.UpdateNetworkResponse()

    async def egress_log(self, request: pb.EgressLogRequest) -> pb.EgressLogResponse:
        if not self.orchestrator.holds(request.sandbox_id):
            raise SandboxNotFound(request.sandbox_id)
        records, after = await self.runtime.egress_log(
            request.sandbox_id, request.after, request.limit or 100
        )
        return pb.EgressLogResponse(
            records=[_egress_record(r) for r in records],
            next=after or 0,
        )

    async def resume(self, request: pb.ResumeRequest) -> pb.ResumeResponse:
        record, rebooted = await self.orchestrator.resume(
            request.sandbox_id, memory=not request.reboot, access_token=request.access_token
        )
        return pb.ResumeResponse(sandbox=_sandbox(record), rebooted=rebooted)

    @property
    def volumes(self) -> NodeVolumes:
        if self._volumes is None:
            raise CapabilityMissing(f"volumes need the gVisor runtime (this node runs "
                                    f"{self.runtime.name})")  # fmt: skip
        return self._volumes

    # ---- template builds ----------------------------------------------------------------------

    @property
    def builds(self) -> NodeBuilds:
        if self._builds is None:
            raise CapabilityMissing(f"template builds need the gVisor runtime (this node runs "
                                    f"{self.runtime.name})")  # fmt: skip
        return self._builds

    async def build_files(self, request: pb.BuildFilesRequest) -> pb.BuildFilesResponse:
        missing = self.builds.files.missing(request.template_id, request.files_hashes)
        return pb.BuildFilesResponse(missing=missing)

    async def put_build_file(self, request: pb.PutBuildFileRequest) -> pb.PutBuildFileResponse:
        files, r = self.builds.files, request
        await asyncio.to_thread(files.put, r.template_id, r.files_hash, r.offset, r.data, r.last)
        return pb.PutBuildFileResponse()

    async def start_build(self, request: pb.StartBuildRequest) -> pb.StartBuildResponse:
        r = request
        login = r.registry if r.HasField("registry") else None
        self.builds.submit(
            BuildOrder(
                build_id=r.build_id, scope=r.template_id, store_name=r.store_name,
                label=r.label or r.store_name,
                steps=[{"type": s.type, "args": list(s.args), "filesHash": s.files_hash,
                        "force": s.force} for s in r.steps],
                from_template=r.from_template, from_image=r.from_image,
                creds=Credentials(login.username, login.password) if login else None,
                start_cmd=r.start_cmd, ready_cmd=r.ready_cmd, force=r.force,
                memory_mb=r.memory_mb or 1024,
            )
        )  # fmt: skip
        return pb.StartBuildResponse()

    async def build_status(self, request: pb.BuildStatusRequest) -> pb.BuildStatusResponse:
        build = self.builds.status(request.build_id)
        lines = build.lines[max(request.from_seq, 0) :]
        return pb.BuildStatusResponse(
            status=build.status,
            lines=[
                pb.BuildLogLine(seq=x.seq, at=x.at, level=x.level, message=x.message, step=x.step)
                for x in lines
            ],
            reason=build.reason,
            reason_step=build.reason_step,
        )

    async def cancel_build(self, request: pb.CancelBuildRequest) -> pb.CancelBuildResponse:
        self.builds.cancel(request.build_id)
        return pb.CancelBuildResponse()

    async def delete_template(self, request: pb.DeleteTemplateRequest) -> pb.DeleteTemplateResponse:
        await asyncio.to_thread(self.builds.delete, request.template_id, request.store_names)
        return pb.DeleteTemplateResponse()
