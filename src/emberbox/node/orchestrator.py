"""Owns what exists on this host: starts sandboxes and brings their envd into service, kills
them, notices the ones that died on their own, and after its own restart adopts what still
runs and removes what does not.

Everything done to one sandbox id runs under that id's lock, so a kill from the API, an
orphan kill from the control plane's reconciler and this node's dead-sandbox check can
overlap without ever tearing a sandbox down twice. End times are not kept here: the control
plane's database owns them, and a paused sandbox is never killed behind its back.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..envd_client.handshake import HandshakeFailed, handshake
from ..host.locks import KeyedLock
from ..runtimes.base import (
    Runtime,
    RuntimeSandbox,
    SandboxGone,
    SandboxSpec,
    SandboxStats,
    SandboxStatus,
    SnapshotRef,
)
from .records import RecordStore, SandboxRecord

log = logging.getLogger("emberbox.node")

ENDED_KEPT = 10_000  # how many end reasons the node remembers for the control plane


class SandboxNotFound(LookupError):
    """No sandbox with this id is held by this node."""


class SandboxExists(ValueError):
    """A create named an id this node already holds."""


class BootFailed(RuntimeError):
    """The machine started but envd never came into service; carries the machine's log."""


@dataclass(frozen=True)
class RecoveryReport:
    adopted: list[str]
    removed: list[str]


class Orchestrator:
    """**Parameters:** runtime - the node's runtime; state_dir - where records live (on the
    same host as the runtime's state); boot_timeout_s - how long envd may take to answer;
    dead_check_every_s - how often sandboxes that stopped on their own are looked for."""

    def __init__(
        self,
        runtime: Runtime,
        state_dir: Path,
        *,
        boot_timeout_s: float = 30.0,
        dead_check_every_s: float = 2.0,
    ) -> None:
        self.runtime = runtime
        self.records = RecordStore(state_dir / "sandboxes")
        self.boot_timeout_s = boot_timeout_s
        self.dead_check_every_s = dead_check_every_s
        self.ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.releases: collections.Counter[str] = collections.Counter()  # teardowns per id
        self._held: dict[str, SandboxRecord] = {}
        self._locks = KeyedLock()
        self._checker: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    # -- start-up / shutdown ---------------------------------------------------------------

    async def start(self) -> RecoveryReport:
        """Adopt live sandboxes whose creation completed; remove everything else (half-created,
        dead, or unknown to us); then start looking for sandboxes that die on their own."""
        # No keep-alive: a later sandbox may reuse an address, and a pooled connection to a
        # dead envd would fail its first request.
        self._http = httpx.AsyncClient(
            timeout=10.0, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )
        records = self.records.load_all()
        live = {s.sandbox_id: s for s in await self.runtime.list()}
        adopted, removed = [], []
        for sandbox_id, record in records.items():
            sandbox = live.get(sandbox_id)
            # "creating": the previous process died inside create(); nobody ever got this id.
            if (
                sandbox is None
                or sandbox.status is SandboxStatus.STOPPED
                or (record.state == "creating")
            ):
                try:
                    async with self._locks.hold(sandbox_id):
                        await self._release_locked(sandbox_id, "exited")
                except Exception:  # its record stays: the next start tries again
                    log.exception("removing %s at start-up failed", sandbox_id)
                    continue
                removed.append(sandbox_id)
                continue
            record.state = "paused" if sandbox.status is SandboxStatus.PAUSED else "running"
            self.records.save(record)
            self._held[sandbox_id] = record
            adopted.append(sandbox_id)
        removed += await self.runtime.cleanup_orphans(keep=adopted)
        if self.dead_check_every_s > 0:
            self._checker = asyncio.create_task(self._check_forever(), name="node-dead-check")
        log.info("node started: adopted %s, removed %s", adopted, removed)
        return RecoveryReport(sorted(adopted), sorted(set(removed)))

    async def close(self) -> None:
        """Stop checking; sandboxes keep running (they outlive the node process)."""
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
            self._checker = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- lifecycle -------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec, access_token: str = "") -> SandboxRecord:
        """Start the machine, then envd's one handshake; on any failure nothing is left."""
        async with self._locks.hold(spec.sandbox_id):
            if spec.sandbox_id in self._held:
                raise SandboxExists(f"sandbox {spec.sandbox_id} already exists on this node")
            record = SandboxRecord(spec.sandbox_id, spec.template_id, time.time())
            self.records.save(record)  # before any resource exists: a crash now is recoverable
            self._held[spec.sandbox_id] = record
            try:
                sandbox = await self.runtime.create(spec)
                version = await self._handshake(sandbox, access_token)
            except BaseException:
                await self._release_locked(spec.sandbox_id, "create failed")
                raise
            record.state = "running"
            record.envd_url, record.host = sandbox.envd_url, sandbox.address
            record.envd_version = version
            self.records.save(record)
            return record

    async def _handshake(self, sandbox: RuntimeSandbox, access_token: str) -> str:
        assert self._http is not None, "node not started"
        try:
            return await handshake(
                self._http,
                sandbox.envd_url,
                sandbox.defaults,
                access_token,
                timeout_s=self.boot_timeout_s,
                alive=lambda: self.runtime.alive(sandbox.sandbox_id),
            )
        except HandshakeFailed as exc:
            tail = await self.runtime.boot_log(sandbox.sandbox_id)
            raise BootFailed(f"sandbox {sandbox.sandbox_id}: {exc}\n{tail}".rstrip()) from None

    async def kill(self, sandbox_id: str) -> bool:
        """Release the sandbox; False when this node held nothing under that id.

        An id the node does not hold is still handed to the runtime (under the same lock):
        leftovers of a crashed create or of another process are removed, never ignored.
        """
        async with self._locks.hold(sandbox_id):
            if sandbox_id in self._held:
                await self._release_locked(sandbox_id, "killed")
                return True
            with contextlib.suppress(SandboxGone):
                return await self.runtime.kill(sandbox_id)
            return False

    async def pause(self, sandbox_id: str) -> None:
        async with self._locks.hold(sandbox_id):
            record = self._get(sandbox_id)
            await self.runtime.pause(sandbox_id)
            record.state = "paused"
            self.records.save(record)

    async def resume(self, sandbox_id: str) -> SandboxRecord:
        async with self._locks.hold(sandbox_id):
            record = self._get(sandbox_id)
            sandbox = await self.runtime.resume(sandbox_id)
            record.state = "running"
            record.envd_url, record.host = sandbox.envd_url, sandbox.address
            self.records.save(record)
            return record

    async def checkpoint(self, sandbox_id: str, snapshot_id: str) -> SnapshotRef:
        async with self._locks.hold(sandbox_id):
            self._get(sandbox_id)
            return await self.runtime.checkpoint(sandbox_id, snapshot_id)

    def list(self) -> builtins.list[SandboxRecord]:
        """Sandboxes this node holds once created (a kill under way still holds them)."""
        return [
            r
            for r in sorted(self._held.values(), key=lambda r: r.created_at)
            if r.state != "creating"
        ]

    def holds(self, sandbox_id: str) -> bool:
        return sandbox_id in self._held

    async def stats(self, sandbox_id: str) -> SandboxStats:
        self._get(sandbox_id)
        return await self.runtime.stats(sandbox_id)

    # -- internals -------------------------------------------------------------------------

    def _get(self, sandbox_id: str) -> SandboxRecord:
        try:
            return self._held[sandbox_id]
        except KeyError:
            raise SandboxNotFound(sandbox_id) from None

    async def _release_locked(self, sandbox_id: str, reason: str) -> None:
        """Free the sandbox, then forget it: while it is still listed, it still holds resources."""
        with contextlib.suppress(SandboxGone):
            await self.runtime.kill(sandbox_id)
        self.releases[sandbox_id] += 1
        log.info("released sandbox %s (%s)", sandbox_id, reason)
        self.ended[sandbox_id] = reason
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)
        self._held.pop(sandbox_id, None)
        self.records.delete(sandbox_id)

    async def check_dead(self) -> builtins.list[str]:
        """Free sandboxes that stopped on their own (OOM, init exited): nothing else would.

        Each is re-checked under its lock, so one being killed right now is left to its killer.
        """
        released = []
        for sandbox in await self.runtime.list():
            if sandbox.status is not SandboxStatus.STOPPED:
                continue
            sandbox_id = sandbox.sandbox_id
            if sandbox_id not in self._held or self._locks.held(sandbox_id):
                continue
            async with self._locks.hold(sandbox_id):
                record = self._held.get(sandbox_id)
                if record is None or record.state == "creating":
                    continue
                if await self.runtime.alive(sandbox_id):
                    continue
                reason = "oom" if sandbox.oom_killed else "exited"
                log.info("sandbox %s stopped on its own (%s)", sandbox_id, reason)
                await self._release_locked(sandbox_id, reason)
                released.append(sandbox_id)
        return released

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.dead_check_every_s)
            try:
                await self.check_dead()
            except Exception:
                log.exception("checking for dead sandboxes failed")
