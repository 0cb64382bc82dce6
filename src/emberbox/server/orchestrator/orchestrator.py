"""Owns the sandboxes on this node: creates and kills them, ends each at its end time,
reports stats, and after its own restart adopts what still runs and cleans what does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ...runtimes.base import (
    NetworkPolicy,
    Runtime,
    RuntimeSandbox,
    SandboxGone,
    SandboxSpec,
    SandboxStats,
    SandboxStatus,
)
from .records import RecordStore, SandboxRecord

log = logging.getLogger(__name__)
ID_ALPHABET = string.ascii_lowercase + string.digits
MAX_TIMEOUT_S = 24 * 3600


class SandboxNotFound(LookupError):
    """No sandbox with this id is owned by this orchestrator."""


def new_sandbox_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(20))


@dataclass(frozen=True)
class Sandbox:
    """What the API layer needs about one sandbox."""

    sandbox_id: str
    template_id: str
    envd_url: str
    address: str
    started_at: float
    end_at: float
    state: str
    metadata: Mapping[str, str]
    envd_access_token: str | None = None


@dataclass(frozen=True)
class RecoveryReport:
    adopted: list[str]
    removed: list[str]


class Orchestrator:
    """**Parameters:** runtime - the node's runtime; state_dir - where records live (keep it on
    the same host as the runtime's state); tick - (optional) upper bound on how late an
    expired sandbox may be killed, in seconds."""

    def __init__(
        self, runtime: Runtime, state_dir: Path, tick: float = 1.0, health_every: float = 5.0
    ) -> None:
        self.runtime = runtime
        self.records = RecordStore(state_dir / "sandboxes")
        self.tick = tick
        self.health_every = health_every
        self.ended: dict[str, str] = {}  # sandbox id -> why it ended (timeout, oom, exited)
        self._sandboxes: dict[str, SandboxRecord] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- startup / shutdown ----------------------------------------------------------------

    async def start(self) -> RecoveryReport:
        """Adopt live sandboxes whose creation completed; remove everything else (half-created,
        dead, or unknown to us); then start enforcing end times."""
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
                await self._release(sandbox_id)
                removed.append(sandbox_id)
                continue
            record.state = "paused" if sandbox.status is SandboxStatus.PAUSED else "running"
            record.address = sandbox.address
            self.records.save(record)
            self._sandboxes[sandbox_id] = record
            adopted.append(sandbox_id)
        removed += await self.runtime.cleanup_orphans(keep=adopted)
        self._reaper = asyncio.create_task(self._reap_forever(), name="orchestrator-reaper")
        log.info("orchestrator started: adopted %s, removed %s", adopted, removed)
        return RecoveryReport(sorted(adopted), sorted(set(removed)))

    async def close(self, kill_all: bool = False) -> None:
        """Stop enforcing end times; sandboxes keep running unless ``kill_all``."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        if kill_all:
            await asyncio.gather(*(self.kill(i) for i in list(self._sandboxes)))

    # -- lifecycle -------------------------------------------------------------------------

    async def create(
        self,
        template_id: str,
        *,
        timeout_s: float = 300,
        cpu_count: int = 2,
        memory_mb: int = 512,
        disk_mb: int = 1024,
        envs: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        allow_internet: bool = True,
        sandbox_id: str | None = None,
    ) -> Sandbox:
        if not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise ValueError(f"timeout must be in (0, {MAX_TIMEOUT_S}] seconds, got {timeout_s}")
        sandbox_id = sandbox_id or new_sandbox_id()
        if sandbox_id in self._sandboxes:
            raise ValueError(f"sandbox {sandbox_id} already exists")
        now = time.time()
        record = SandboxRecord(
            sandbox_id=sandbox_id,
            template_id=template_id,
            started_at=now,
            end_at=now + timeout_s,
            metadata=dict(metadata or {}),
        )
        self.records.save(record)  # before any resource exists: a crash now is recoverable
        self._sandboxes[sandbox_id] = record
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            template_id=template_id,
            cpu_count=cpu_count,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            envs=dict(envs or {}),
            network=NetworkPolicy(allow_internet=allow_internet),
        )
        try:
            sandbox = await self.runtime.create(spec)
        except BaseException:
            self._sandboxes.pop(sandbox_id, None)
            self.records.delete(sandbox_id)
            raise
        # The timeout counts from when the sandbox is usable, as the client sees it.
        record.state, record.address = "running", sandbox.address
        record.end_at = time.time() + timeout_s
        self.records.save(record)
        self._wake.set()
        return self._view(record, sandbox)

    async def kill(self, sandbox_id: str) -> None:
        if sandbox_id not in self._sandboxes:
            raise SandboxNotFound(sandbox_id)
        await self._release(sandbox_id)

    async def set_timeout(self, sandbox_id: str, timeout_s: float) -> Sandbox:
        """Move the end time to now + ``timeout_s`` (E2B's set_timeout semantics)."""
        record = self._get(sandbox_id)
        if not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise ValueError(f"timeout must be in (0, {MAX_TIMEOUT_S}] seconds")
        record.end_at = time.time() + timeout_s
        self.records.save(record)
        self._wake.set()
        return self._view(record)

    async def pause(self, sandbox_id: str) -> None:
        record = self._get(sandbox_id)
        await self.runtime.pause(sandbox_id)
        record.state = "paused"
        self.records.save(record)

    async def resume(self, sandbox_id: str, timeout_s: float | None = None) -> Sandbox:
        record = self._get(sandbox_id)
        sandbox = await self.runtime.resume(sandbox_id)
        record.state = "running"
        if timeout_s is not None:
            record.end_at = time.time() + timeout_s
        self.records.save(record)
        return self._view(record, sandbox)

    def get(self, sandbox_id: str) -> Sandbox:
        return self._view(self._get(sandbox_id))

    def list(self) -> list[Sandbox]:
        return [self._view(r) for r in sorted(self._sandboxes.values(), key=lambda r: r.started_at)]

    async def stats(self, sandbox_id: str) -> SandboxStats:
        self._get(sandbox_id)
        return await self.runtime.stats(sandbox_id)

    # -- internals -------------------------------------------------------------------------

    def _get(self, sandbox_id: str) -> SandboxRecord:
        try:
            return self._sandboxes[sandbox_id]
        except KeyError:
            raise SandboxNotFound(sandbox_id) from None

    async def _release(self, sandbox_id: str, reason: str = "killed") -> None:
        """Free the sandbox, then forget it: while it is still listed, it still holds resources."""
        with contextlib.suppress(SandboxGone):
            await self.runtime.kill(sandbox_id)
        self.ended[sandbox_id] = reason
        self._sandboxes.pop(sandbox_id, None)
        self.records.delete(sandbox_id)

    async def _release_dead(self) -> None:
        """Free sandboxes that stopped on their own (OOM, init exited): nothing else would."""
        for sandbox in await self.runtime.list():
            record = self._sandboxes.get(sandbox.sandbox_id)
            if record is None or record.state == "creating":
                continue
            if sandbox.status is SandboxStatus.STOPPED:
                reason = "oom" if sandbox.oom_killed else "exited"
                log.info("sandbox %s stopped on its own (%s)", sandbox.sandbox_id, reason)
                await self._release(sandbox.sandbox_id, reason)

    async def _reap_forever(self) -> None:
        last_health = time.monotonic()
        while True:
            now = time.time()
            expired = [
                r.sandbox_id
                for r in self._sandboxes.values()
                if r.end_at <= now and r.state != "creating"  # create() owns it until it returns
            ]
            for sandbox_id in expired:
                log.info("sandbox %s reached its end time", sandbox_id)
                try:
                    await self._release(sandbox_id, "timeout")
                except Exception:
                    log.exception("killing expired sandbox %s failed", sandbox_id)
            if time.monotonic() - last_health >= self.health_every:
                last_health = time.monotonic()
                try:
                    await self._release_dead()
                except Exception:
                    log.exception("checking for dead sandboxes failed")
            upcoming = [r.end_at for r in self._sandboxes.values() if r.state != "creating"]
            delay = min([self.tick, *(max(0.0, t - time.time()) for t in upcoming)])
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def _view(self, record: SandboxRecord, sandbox: RuntimeSandbox | None = None) -> Sandbox:
        address = sandbox.address if sandbox else (record.address or "")
        return Sandbox(
            sandbox_id=record.sandbox_id,
            template_id=record.template_id,
            envd_url=sandbox.envd_url if sandbox else f"http://{address}:49983",
            address=address,
            started_at=record.started_at,
            end_at=record.end_at,
            state=record.state,
            metadata=dict(record.metadata),
            envd_access_token=record.envd_access_token,
        )
