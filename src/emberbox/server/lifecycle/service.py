"""Sandbox operations as the API sees them: admission, node calls, persisted state changes.

The database is the one owner of lifecycle state and end times; the node (reached only through
its client) owns what exists on the host. Every operation is scoped by team: another team's
sandbox is "not found", never "forbidden". Creates are admitted under one lock (concurrency cap
+ node resources + the ``creating`` row are decided together), and a refused request leaves no
row and no process behind. Failures are raised as domain errors (``errors.py``).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..._proto.node import node_pb2 as pb
from ...envd_client import EnvdClient
from ...node.client import NodeClient, NodeError, NodeFull, NodeSandboxNotFound, NodeUnsupported
from ...vocabulary import new_sandbox_id
from ..auth.store import Principal
from ..config import Limits
from ..db import sandboxes as q
from ..db.models import Sandbox, SandboxMetadata, utcnow
from ..limits.scheduler import ResourceScheduler, Usage
from .errors import (
    Busy,
    Conflict,
    GuestUnhealthy,
    Invalid,
    NoCapacity,
    NotFound,
    QuotaExceeded,
    SandboxFailed,
    Unreachable,
    Unsupported,
)
from .states import COUNTS_TOWARD_QUOTA, HOLDS_RESOURCES, VISIBLE, EndReason, State
from .templates import TemplateCatalog

log = logging.getLogger("emberbox.lifecycle")

DEFAULT_RESUME_TIMEOUT_S = 300


@dataclass(frozen=True)
class NodeFacts:
    """What the control plane knows of the node it schedules on (from ``Node.Info``)."""

    node_id: str
    runtime: str
    capabilities: pb.Capabilities


@dataclass(frozen=True)
class CreateRequest:
    template: str
    timeout_s: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    env_vars: Mapping[str, str] = field(default_factory=dict)
    allow_internet: bool = True
    auto_pause: bool = False
    idempotency_key: str | None = None


async def _envd_answers(row: Sandbox) -> bool:
    if not row.envd_url:
        return False
    async with EnvdClient(row.envd_url) as envd:
        return await envd.health(timeout=2.0)


class SandboxService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        node: NodeClient,
        facts: NodeFacts,
        templates: TemplateCatalog,
        limits: Limits,
        scheduler: ResourceScheduler,
        on_gone: Callable[[str], None] = lambda _id: None,
    ) -> None:
        self.sessions = sessions
        self.node = node
        self.facts = facts
        self.templates = templates
        self.limits = limits
        self.scheduler = scheduler
        self.on_gone = on_gone
        self._admission = asyncio.Lock()

    # ---- create -------------------------------------------------------------------------------

    def check_timeout(self, timeout_s: int, minimum: int = 0) -> None:
        """Up to the deployment's maximum (which may exceed a day). A new sandbox needs at least
        a second; moving a live one's end to now (0) ends it at the reaper's next tick."""
        if timeout_s < minimum or timeout_s > self.limits.max_timeout_s:
            raise Invalid(
                f"timeout must be between {minimum} and {self.limits.max_timeout_s} seconds"
            )

    def _unsupported(self, what: str) -> Unsupported:
        return Unsupported(f"the {self.facts.runtime} runtime {what}")

    async def create(self, who: Principal, req: CreateRequest) -> Sandbox:
        tpl = self.templates.resolve(req.template)
        if tpl is None:
            raise NotFound(f"template '{req.template}' not found")
        self.check_timeout(req.timeout_s, minimum=1)
        if tpl.cpu_count > self.limits.max_cpu_count or tpl.memory_mb > self.limits.max_memory_mb:
            raise Invalid(
                f"template '{req.template}' needs {tpl.cpu_count} vCPUs and {tpl.memory_mb} MiB; "
                f"the limit per sandbox is {self.limits.max_cpu_count} vCPUs and "
                f"{self.limits.max_memory_mb} MiB"
            )
        if req.auto_pause:
            raise Unsupported("pausing at the end time (autoPause) is not supported yet")
        if not req.allow_internet and not self.facts.capabilities.no_internet:
            raise self._unsupported("cannot restrict internet access")

        sandbox_id = new_sandbox_id()
        token = secrets.token_urlsafe(32)
        async with self._admission, self.sessions.begin() as s:
            if req.idempotency_key:
                same = await q.by_idempotency_key(s, who.team_id, req.idempotency_key)
                if same is not None and State(same.state) == State.CREATING:
                    raise Busy(
                        "a create with this Idempotency-Key is still in progress",
                        error_code="idempotency_in_progress",
                    )
                if same is not None:
                    return same
            running = await q.count_for_team(s, who.team_id, COUNTS_TOWARD_QUOTA)
            if running >= self.limits.max_concurrent_sandboxes:
                raise QuotaExceeded(
                    f"concurrent sandbox limit reached ({self.limits.max_concurrent_sandboxes}"
                    " per team); kill a sandbox first"
                )
            cpus, mem = await q.resources_in_use(s, HOLDS_RESOURCES)
            refusal = self.scheduler.refusal(Usage(cpus, mem), tpl.cpu_count, tpl.memory_mb)
            if refusal is not None:
                raise NoCapacity(refusal, error_code="sandbox_capacity_unavailable")
            now = utcnow()
            s.add(
                Sandbox(
                    id=sandbox_id,
                    team_id=who.team_id,
                    template_id=tpl.template_id,
                    alias=tpl.alias,
                    state=str(State.CREATING),
                    cpu_count=tpl.cpu_count,
                    memory_mb=tpl.memory_mb,
                    disk_mb=tpl.disk_mb,
                    envd_version="",
                    envd_access_token=token,
                    idempotency_key=req.idempotency_key,
                    allow_internet=req.allow_internet,
                    node_id=self.facts.node_id,
                    started_at=now,
                    end_at=now + dt.timedelta(seconds=req.timeout_s),
                    metadata_items=[
                        SandboxMetadata(key=k, value=v) for k, v in req.metadata.items()
                    ],
                )
            )

        spec = pb.SandboxSpec(
            sandbox_id=sandbox_id,
            template_id=tpl.template_id,
            cpu_count=tpl.cpu_count,
            memory_mb=tpl.memory_mb,
            disk_mb=tpl.disk_mb,
            env_vars=dict(req.env_vars),
            access_token=token,
            allow_internet=req.allow_internet,
        )
        try:
            started = await self.node.create(spec)
        except BaseException as e:  # cancellation too: never leave a half-made sandbox behind
            log.warning("create of %s failed: %s", sandbox_id, e)
            if not await self._fail(
                sandbox_id, EndReason.CREATE_FAILED, str(e) or type(e).__name__, [State.CREATING]
            ):
                with contextlib.suppress(Exception):
                    await self.node.kill(sandbox_id)
            if not isinstance(e, Exception):
                raise
            if isinstance(e, NodeFull):
                raise NoCapacity(e.message, error_code="sandbox_capacity_unavailable") from e
            if isinstance(e, NodeUnsupported):
                raise Unsupported(e.message) from e
            if isinstance(e, NodeSandboxNotFound):  # at create: the node lacks the template
                raise NotFound(f"template '{req.template}' not found on its node") from e
            raise SandboxFailed(
                f"sandbox could not be started: {e}", error_code="sandbox_create_failed"
            ) from e
        return await self._mark_running(sandbox_id, started, req.timeout_s)

    async def _mark_running(self, sandbox_id: str, b: pb.Sandbox, timeout_s: int) -> Sandbox:
        now = utcnow()
        async with self.sessions.begin() as s:
            ok = await q.set_state(
                s,
                sandbox_id,
                [State.CREATING],
                State.RUNNING,
                envd_url=b.envd_url,
                host_address=b.host,
                envd_version=b.envd_version,
                started_at=now,
                end_at=now + dt.timedelta(seconds=timeout_s),
            )
        if not ok:  # killed while it was starting
            await self.node.kill(sandbox_id)
            raise SandboxFailed("sandbox was stopped while starting")
        async with self.sessions() as s:
            row = await q.get(s, sandbox_id)
            assert row is not None
            return row

    async def _fail(
        self, sandbox_id: str, reason: EndReason, error: str, from_states: list[State]
    ) -> bool:
        """Record the failure first (so nobody else acts on it), then clean up on the node."""
        async with self.sessions.begin() as s:
            ok = await q.set_state(
                s,
                sandbox_id,
                from_states,
                State.FAILED,
                end_reason=str(reason),
                error=error[:2000],
                ended_at=utcnow(),
            )
        if ok:
            self.on_gone(sandbox_id)
            try:
                await self.node.kill(sandbox_id)
            except Exception:
                log.exception("cleanup kill of %s failed", sandbox_id)
        return ok

    # ---- lookups ------------------------------------------------------------------------------

    async def get(self, who: Principal, sandbox_id: str) -> Sandbox:
        async with self.sessions() as s:
            row = await q.get_for_team(s, who.team_id, sandbox_id, VISIBLE)
        if row is None:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        return row

    async def list(
        self,
        who: Principal,
        states: set[State],
        *,
        metadata: Mapping[str, str],
        template: str | None = None,
        started_after: dt.datetime | None = None,
        descending: bool = True,
        limit: int = 100,
        cursor: str | None = None,
    ) -> q.Page:
        """One page of the caller's sandboxes (keyset pagination, see ``db.sandboxes``)."""
        async with self.sessions() as s:
            try:
                return await q.list_page(
                    s,
                    team_id=who.team_id,
                    states=states,
                    metadata=metadata,
                    template=template,
                    started_after=started_after,
                    descending=descending,
                    limit=limit,
                    cursor=cursor,
                )
            except q.BadCursor as e:
                raise Invalid(str(e)) from e

    async def stats(
        self, who: Principal, sandbox_id: str
    ) -> tuple[Sandbox, pb.StatsResponse | None]:
        row = await self.get(who, sandbox_id)
        if State(row.state) != State.RUNNING:
            return row, None
        try:
            return row, await self.node.stats(sandbox_id)
        except NodeError:
            return row, None

    async def envd_journal(
        self, who: Principal, sandbox_id: str, after: int = 0
    ) -> tuple[Sandbox, builtins.list[dict[str, Any]]]:
        """The sandbox row and envd's journal (empty when the sandbox no longer runs)."""
        row = await self.get(who, sandbox_id)
        if State(row.state) != State.RUNNING or not row.envd_url:
            return row, []
        try:
            async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
                response = await http.get(
                    f"{row.envd_url}/logs",
                    params={"after": after},
                    headers={"X-Access-Token": row.envd_access_token},
                )
        except httpx.HTTPError as exc:
            raise Unreachable(f"sandbox '{sandbox_id}' did not answer: {exc}") from exc
        if response.status_code != 200:
            raise Unreachable(f"sandbox '{sandbox_id}' answered {response.status_code}")
        entries: builtins.list[dict[str, Any]] = response.json().get("entries", [])
        return row, entries

    # ---- changes ------------------------------------------------------------------------------

    async def set_timeout(self, who: Principal, sandbox_id: str, timeout_s: int) -> None:
        self.check_timeout(timeout_s)
        await self.get(who, sandbox_id)
        end_at = utcnow() + dt.timedelta(seconds=timeout_s)
        async with self.sessions.begin() as s:
            if not await q.update_fields(s, sandbox_id, VISIBLE, end_at=end_at):
                raise NotFound(f"sandbox '{sandbox_id}' not found")

    async def connect(
        self, who: Principal, sandbox_id: str, timeout_s: int | None, with_memory: bool = True
    ) -> tuple[Sandbox, bool]:
        """Extend (never shorten) a running sandbox's end time, or resume a paused one.

        Returns the sandbox and whether it was resumed (the API answers 201 then, else 200).
        ``with_memory`` False (a cold boot from the files alone) is refused for now.
        """
        if timeout_s is not None:
            self.check_timeout(timeout_s)
        row = await self.get(who, sandbox_id)
        if State(row.state) in (State.PAUSED, State.PAUSING, State.RESUMING):
            if not with_memory:
                raise Unsupported("resuming without memory (memory: false) is not supported yet")
            return await self._resume(row, timeout_s), True
        if timeout_s is not None:
            wanted = utcnow() + dt.timedelta(seconds=timeout_s)
            if wanted > row.end_at:
                async with self.sessions.begin() as s:
                    await q.update_fields(s, sandbox_id, [State.RUNNING], end_at=wanted)
                row.end_at = wanted
        return row, False

    async def pause(
        self,
        who: Principal,
        sandbox_id: str,
        keep_memory: bool = True,
        require_healthy_guest: bool = False,
    ) -> None:
        row = await self.get(who, sandbox_id)
        if State(row.state) != State.RUNNING:
            raise Conflict(f"sandbox '{sandbox_id}' is already paused")
        if not keep_memory:
            raise Unsupported("a filesystem-only pause (memory: false) is not supported yet")
        if not self.facts.capabilities.pause:
            raise self._unsupported("cannot pause sandboxes")
        if require_healthy_guest and not await _envd_answers(row):
            raise GuestUnhealthy(f"sandbox '{sandbox_id}' envd does not answer; not paused")
        async with self.sessions.begin() as s:
            if not await q.set_state(s, sandbox_id, [State.RUNNING], State.PAUSING):
                raise Conflict(f"sandbox '{sandbox_id}' is already paused")
        self.on_gone(sandbox_id)
        try:
            await self.node.pause(sandbox_id)
        except BaseException as e:  # cancellation too: never leave the row half-way
            log.warning("pause of %s failed: %s", sandbox_id, e)
            async with self.sessions.begin() as s:
                await q.set_state(s, sandbox_id, [State.PAUSING], State.RUNNING)
            if not isinstance(e, Exception):
                raise
            raise SandboxFailed(f"pause failed: {e}") from e
        async with self.sessions.begin() as s:
            await q.set_state(s, sandbox_id, [State.PAUSING], State.PAUSED)

    async def _resume(self, row: Sandbox, timeout_s: int | None) -> Sandbox:
        if not self.facts.capabilities.pause:
            raise self._unsupported("cannot resume sandboxes")
        async with self.sessions.begin() as s:
            if not await q.set_state(s, row.id, [State.PAUSED], State.RESUMING):
                raise Busy(f"sandbox '{row.id}' is being paused or resumed; retry")
        try:
            b = await self.node.resume(row.id)
        except BaseException as e:  # cancellation too: never leave the row half-way
            log.warning("resume of %s failed: %s", row.id, e)
            async with self.sessions.begin() as s:
                await q.set_state(s, row.id, [State.RESUMING], State.PAUSED)
            if not isinstance(e, Exception):
                raise
            if isinstance(e, NodeSandboxNotFound):
                await self.mark_crashed(row.id, oom=False)
                raise NotFound(f"sandbox '{row.id}' no longer exists on its node") from e
            raise SandboxFailed(f"resume failed: {e}") from e
        timeout = timeout_s if timeout_s is not None else DEFAULT_RESUME_TIMEOUT_S
        end_at = utcnow() + dt.timedelta(seconds=timeout)
        async with self.sessions.begin() as s:
            await q.set_state(
                s,
                row.id,
                [State.RESUMING],
                State.RUNNING,
                envd_url=b.envd_url,
                host_address=b.host,
                end_at=end_at,
            )
        async with self.sessions() as s:
            fresh = await q.get(s, row.id)
        assert fresh is not None
        return fresh

    async def kill(self, who: Principal, sandbox_id: str) -> None:
        await self.get(who, sandbox_id)
        if not await self.end(sandbox_id, EndReason.KILLED_BY_USER):
            raise NotFound(f"sandbox '{sandbox_id}' not found")

    async def end(self, sandbox_id: str, reason: EndReason) -> bool:
        """Kill on the node and record why; False if another actor already ended it."""
        from_states = [State.RUNNING, State.PAUSING, State.PAUSED, State.RESUMING, State.CREATING]
        # An end time moved later since the reaper saw it (set_timeout, connect) wins.
        ended_by = utcnow() if reason is EndReason.TIMEOUT else None
        async with self.sessions.begin() as s:
            if not await q.set_state(s, sandbox_id, from_states, State.KILLING, ended_by=ended_by):
                return False
        self.on_gone(sandbox_id)
        try:
            await self.node.kill(sandbox_id)
        except (NodeError, OSError) as e:
            log.exception("kill of %s failed", sandbox_id)
            async with self.sessions.begin() as s:
                await q.set_state(
                    s,
                    sandbox_id,
                    [State.KILLING],
                    State.FAILED,
                    end_reason=str(reason),
                    error=f"kill failed: {e}",
                    ended_at=utcnow(),
                )
            return True
        async with self.sessions.begin() as s:
            await q.set_state(
                s,
                sandbox_id,
                [State.KILLING],
                State.KILLED,
                end_reason=str(reason),
                ended_at=utcnow(),
            )
        log.info("sandbox %s ended: %s", sandbox_id, reason)
        return True

    async def mark_crashed(self, sandbox_id: str, oom: bool) -> bool:
        reason = EndReason.OUT_OF_MEMORY if oom else EndReason.RUNTIME_CRASH
        live = [State.CREATING, State.RUNNING, State.PAUSING, State.PAUSED, State.RESUMING]
        return await self._fail(sandbox_id, reason, "sandbox stopped outside the server", live)


__all__ = ["CreateRequest", "NodeFacts", "SandboxService"]
