"""A runtime with no machines: sandboxes are records in memory, envd is a tiny real HTTP
server per sandbox on loopback (so the node's handshake runs for real), and every host
teardown is counted. Lets node and lifecycle logic run without root or runsc."""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from emberbox.envd_client import EnvdDefaults
from emberbox.host.errors import HostError
from emberbox.runtimes.base import (
    Capabilities,
    CapabilityMissing,
    Runtime,
    RuntimeError_,
    RuntimeSandbox,
    SandboxActivity,
    SandboxGone,
    SandboxNotRunning,
    SandboxSpec,
    SandboxStats,
    SandboxStatus,
    SnapshotRef,
)

MEMORY_BYTES = 4096  # what a fake pause says its saved memory takes
FILES_BYTES = 1024  # and a files-only pause its files


class _Envd:
    """Answers /health and /init like envd (once a token is set, only its holder may /init
    again); remembers what each accepted /init said."""

    def __init__(self) -> None:
        self.inits: list[dict[str, object]] = []
        self.token: str | None = None
        self.init_delay_s = 0.0  # a slow (or hung) envd
        self.running = asyncio.Event()  # cleared while its machine is frozen: nothing answers
        self.running.set()
        self.endless_logs = False

        async def health(request: Request) -> Response:
            await self.running.wait()
            return Response(status_code=204, headers={"X-Envd-Version": "0.6.13"})

        async def init(request: Request) -> Response:
            await self.running.wait()
            if self.token and request.headers.get("x-access-token") != self.token:
                return Response(status_code=401)
            body = await request.json()
            await asyncio.sleep(self.init_delay_s)
            self.inits.append(body)
            if "accessToken" in body:
                self.token = body["accessToken"] or None
            return Response(status_code=204, headers={"X-Envd-Version": "0.6.13"})

        async def logs(request: Request) -> Response:
            if self.endless_logs:  # a guest answering without end on envd's port
                chunk = b'{"entries": [' + b'{"seq": 1, "msg": "x"}, ' * 4096

                async def forever() -> AsyncIterator[bytes]:
                    while True:
                        yield chunk
                        await asyncio.sleep(0)

                return StreamingResponse(forever(), media_type="application/json")
            return Response(b'{"entries": []}', media_type="application/json")

        app = Starlette(routes=[Route("/health", health), Route("/init", init, methods=["POST"]),
                                Route("/logs", logs)])  # fmt: skip
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
                log_level="error",
                lifespan="off",
                timeout_graceful_shutdown=1,
            )  # a killed machine waits for nothing
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.005)
        port: int = self.server.servers[0].sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task


class FakeRuntime(Runtime):
    name = "fake"
    capabilities = Capabilities(pause=True)

    def __init__(
        self,
        create_delay_s: float = 0.0,
        kill_delay_s: float = 0.0,
        pause_delay_s: float = 0.0,
        resume_delay_s: float = 0.0,
    ) -> None:
        self.create_delay_s = create_delay_s
        self.kill_delay_s = kill_delay_s
        self.pause_delay_s = pause_delay_s
        self.resume_delay_s = resume_delay_s
        self.sandboxes: dict[str, RuntimeSandbox] = {}
        self.envds: dict[str, _Envd] = {}
        self.teardowns: collections.Counter[str] = collections.Counter()
        self.in_teardown: set[str] = set()
        self.overlaps = 0  # teardowns of one id that ran at the same time (must stay 0)
        self.broken: set[str] = set()  # ids whose teardown fails (a host command erring)
        self.frozen: set[str] = set()
        self.offloaded: list[str] = []  # every offload that moved memory, in order
        self.offloading: set[str] = set()  # its limit lowered: a thaw now would be a bug
        self.bad_thaws = 0  # thaws or pauses of a sandbox in the middle of an offload step
        self.offload_s = 0.0
        # Paused sandboxes keep their processes, as gVisor's for a fast resume (kept.py):
        # they report activity and can be offloaded.
        self.keeps_paused = False
        self.files_only: set[str] = set()  # paused keeping only files: a resume reboots them
        self.offload_error: Exception | None = None
        self.versions: dict[str, str] = {}  # each template's content id (template_version)
        self.offload_steps: collections.Counter[str] = collections.Counter()
        # What ``activity`` reports; None: the runtime cannot tell (nothing is idle).
        self.cpu_ns: dict[str, int] | None = None
        self.resident: dict[str, int] = collections.defaultdict(lambda: 40 << 20)

    def template_version(self, template_id: str) -> str | None:
        return self.versions.get(template_id)

    async def create(self, spec: SandboxSpec) -> RuntimeSandbox:
        if spec.snapshot is not None:
            raise CapabilityMissing("the fake runtime cannot start from snapshots")
        if spec.sandbox_id in self.sandboxes:
            raise ValueError(f"sandbox {spec.sandbox_id} already exists")
        envd = _Envd()
        self.envds[spec.sandbox_id] = envd
        port = await envd.start()
        await asyncio.sleep(self.create_delay_s)
        sandbox = RuntimeSandbox(
            sandbox_id=spec.sandbox_id,
            template_id=spec.template_id,
            address="127.0.0.1",
            envd_port=port,
            defaults=EnvdDefaults("user", "/home/user", dict(spec.envs)),
        )
        self.sandboxes[spec.sandbox_id] = sandbox
        return sandbox

    async def kill(self, sandbox_id: str) -> bool:
        if sandbox_id in self.broken:
            raise HostError(f"teardown of {sandbox_id} failed")
        if sandbox_id not in self.sandboxes and sandbox_id not in self.envds:
            return False
        if sandbox_id in self.in_teardown:
            self.overlaps += 1
        self.in_teardown.add(sandbox_id)
        try:
            self.teardowns[sandbox_id] += 1
            await asyncio.sleep(self.kill_delay_s)
            self.frozen.discard(sandbox_id)
            envd = self.envds.pop(sandbox_id, None)
            if envd is not None:
                envd.running.set()  # a kill works on a frozen machine
                await envd.stop()
            self.sandboxes.pop(sandbox_id, None)
        finally:
            self.in_teardown.discard(sandbox_id)
        return True

    async def freeze(self, sandbox_id: str) -> None:
        if sandbox_id in self.envds:
            self.frozen.add(sandbox_id)
            self.envds[sandbox_id].running.clear()

    async def thaw(self, sandbox_id: str) -> None:
        self.bad_thaws += sandbox_id in self.offloading
        self.frozen.discard(sandbox_id)
        if sandbox_id in self.envds:
            self.envds[sandbox_id].running.set()

    async def offload(self, sandbox_id: str) -> bool | None:
        """Three steps of ``offload_s`` each, the last leaving 4 MiB resident; a sandbox is
        listed in ``offloaded`` at its first. Frozen or running, paused only with
        ``keeps_paused``."""
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None or (sandbox.status is SandboxStatus.PAUSED and not self.keeps_paused):
            return None
        if self.offload_error is not None:
            raise self.offload_error
        self.offloading.add(sandbox_id)
        try:
            await asyncio.sleep(self.offload_s)
        finally:
            self.offloading.discard(sandbox_id)
        if sandbox_id not in self.offloaded:
            self.offloaded.append(sandbox_id)
        self.offload_steps[sandbox_id] += 1
        if self.offload_steps[sandbox_id] % 3 == 0:
            self.resident[sandbox_id] = 4 << 20
        return self.offload_steps[sandbox_id] % 3 != 0

    async def activity(self, sandbox_id: str) -> SandboxActivity | None:
        sandbox = self.sandboxes.get(sandbox_id)
        if self.cpu_ns is None or sandbox is None:
            return None
        if sandbox.status is SandboxStatus.PAUSED and not self.keeps_paused:
            return None
        return SandboxActivity(self.cpu_ns.get(sandbox_id, 0), self.resident[sandbox_id])

    def die(self, sandbox_id: str) -> None:
        """The machine stops on its own (as after an OOM kill of its init)."""
        sandbox = self.sandboxes[sandbox_id]
        self.sandboxes[sandbox_id] = RuntimeSandbox(
            sandbox.sandbox_id, sandbox.template_id, sandbox.address, sandbox.envd_port,
            SandboxStatus.STOPPED, oom_killed=True,
        )  # fmt: skip

    async def alive(self, sandbox_id: str) -> bool:
        return not self.known_stopped(sandbox_id)

    def known_stopped(self, sandbox_id: str) -> bool:
        sandbox = self.sandboxes.get(sandbox_id)
        return sandbox is None or sandbox.status is SandboxStatus.STOPPED

    async def list(self) -> builtins.list[RuntimeSandbox]:
        return list(self.sandboxes.values())

    async def stats(self, sandbox_id: str) -> SandboxStats:
        if sandbox_id not in self.sandboxes:
            raise SandboxGone(f"sandbox {sandbox_id} does not exist")
        return SandboxStats(2, 1.0, 1, 2, 3, 4)

    async def pause(self, sandbox_id: str, memory: bool = True) -> int:
        """Returns ``MEMORY_BYTES`` saved, or without ``memory`` ``FILES_BYTES``."""
        self.bad_thaws += sandbox_id in self.offloading
        await asyncio.sleep(self.pause_delay_s)
        sandbox = self.sandboxes[sandbox_id]
        if sandbox.status is SandboxStatus.PAUSED:  # (as gVisor's)
            raise SandboxNotRunning(f"sandbox {sandbox_id} is paused")
        self.sandboxes[sandbox_id] = RuntimeSandbox(
            sandbox.sandbox_id, sandbox.template_id, sandbox.address, sandbox.envd_port,
            SandboxStatus.PAUSED, kept_memory=memory,
            paused_bytes=MEMORY_BYTES if memory else FILES_BYTES,
        )  # fmt: skip
        if not memory:
            self.files_only.add(sandbox_id)
        return self.sandboxes[sandbox_id].paused_bytes

    async def resume(self, sandbox_id: str, memory: bool = True) -> RuntimeSandbox:
        """Without ``memory``, or paused without it, it comes back ``rebooted`` (its fake
        envd goes on answering: nothing of it is lost here)."""
        await asyncio.sleep(self.resume_delay_s)
        sandbox = self.sandboxes[sandbox_id]
        rebooted = not memory or sandbox_id in self.files_only
        self.files_only.discard(sandbox_id)
        self.sandboxes[sandbox_id] = RuntimeSandbox(
            sandbox.sandbox_id, sandbox.template_id, sandbox.address, sandbox.envd_port,
            rebooted=rebooted,
        )  # fmt: skip
        return self.sandboxes[sandbox_id]

    async def cleanup_orphans(self, keep: Sequence[str]) -> builtins.list[str]:
        removed = []
        for sandbox_id in [i for i in list(self.sandboxes) if i not in keep]:
            with contextlib.suppress(HostError):  # as the real runtimes: left for next time
                await self.kill(sandbox_id)
                removed.append(sandbox_id)
        return removed


class CheckpointingRuntime(FakeRuntime):
    """Also takes snapshots (nothing is saved: forks and creates from them are not served),
    ``checkpoint_delay_s`` long, and holds them until deleted (``held``)."""

    capabilities = Capabilities(pause=True, snapshot=True, fork=True)

    def __init__(self, checkpoint_delay_s: float = 0.0) -> None:
        super().__init__()
        self.checkpoint_delay_s = checkpoint_delay_s
        self.held: dict[str, SnapshotRef] = {}
        self.checkpointing = False
        # How the next rollbacks fail: None (they do not), "before" (nothing was touched),
        # "paused" (left paused at the snapshot, as gVisor's), "lost" (the sandbox is gone).
        self.restore_fails: str | None = None
        self.restore_delay_s = 0.0
        self.restores = 0
        self.restored: list[str] = []  # the snapshot ids restored, in order
        self.checkpoints = 0  # taken, kept or not
        self.given_envs: dict[str, dict[str, str]] = {}  # by snapshot id, as checkpoint got them

    async def restore(self, sandbox_id: str, snapshot: SnapshotRef) -> RuntimeSandbox:
        self.restores += 1
        self.restored.append(snapshot.snapshot_id)
        await asyncio.sleep(self.restore_delay_s)
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None or snapshot.snapshot_id not in self.held:
            raise SandboxGone(f"sandbox {sandbox_id} or snapshot {snapshot.snapshot_id} is gone")
        if self.restore_fails == "paused":
            paused = SandboxStatus.PAUSED
            self.sandboxes[sandbox_id] = dataclasses.replace(
                sandbox, status=paused, paused_bytes=self.held[snapshot.snapshot_id].size_bytes
            )
        elif self.restore_fails == "lost":
            del self.sandboxes[sandbox_id]
        if self.restore_fails is not None:
            raise RuntimeError_(f"restore of {sandbox_id} failed ({self.restore_fails})")
        return sandbox

    async def checkpoint(
        self,
        sandbox_id: str,
        snapshot_id: str,
        memory: bool = True,
        given_env: Mapping[str, str] | None = None,
    ) -> SnapshotRef:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise SandboxGone(f"sandbox {sandbox_id} does not exist")
        self.checkpoints += 1
        self.given_envs[snapshot_id] = dict(given_env or {})
        self.checkpointing = True
        try:
            await asyncio.sleep(self.checkpoint_delay_s)
        finally:
            self.checkpointing = False
        ref = SnapshotRef(snapshot_id, self.name, f"/fake/{snapshot_id}", sandbox.template_id,
                          size_bytes=4096, memory=memory)  # fmt: skip
        self.held[snapshot_id] = ref
        return ref

    async def delete_snapshot(self, snapshot: SnapshotRef) -> None:
        self.held.pop(snapshot.snapshot_id, None)

    async def snapshots(self) -> builtins.list[SnapshotRef]:
        return list(self.held.values())
