"""Sandbox operations as the API sees them: admission, backend calls, persisted state changes.

Every operation is scoped by team: another team's sandbox is "not found", never "forbidden".
Creates are admitted under one lock (concurrency cap + node resources + the ``creating`` row are
decided together), and a refused request leaves no row and no process behind.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import logging
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ...runtimes.base import SandboxStats
from ..api.errors import ApiError
from ..auth.store import Principal
from ..backends.base import BackendError, BackendSandbox, BackendSpec, NotSupported, SandboxBackend
from ..config import Limits
from ..db import sandboxes as q
from ..db.models import Sandbox, SandboxMetadata, utcnow
from ..limits.scheduler import ResourceScheduler, Usage
from .states import COUNTS_TOWARD_QUOTA, HOLDS_RESOURCES, VISIBLE, EndReason, State
from .templates import TemplateCatalog

log = logging.getLogger("emberbox.lifecycle")

_ID_ALPHABET = string.ascii_lowercase + string.digits
DEFAULT_RESUME_TIMEOUT_S = 300


def new_sandbox_id() -> str:
    """20 chars of [a-z0-9]: no '-' or '.', which ``<port>-<id>.<domain>`` splits on."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


@dataclass(frozen=True)
class CreateRequest:
    template: str
    timeout_s: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    env_vars: Mapping[str, str] = field(default_factory=dict)
    allow_internet: bool = True
    auto_pause: bool = False
    idempotency_key: str | None = None


class SandboxService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        backend: SandboxBackend,
        templates: TemplateCatalog,
        limits: Limits,
        scheduler: ResourceScheduler,
        on_gone: Callable[[str], None] = lambda _id: None,
    ) -> None:
        self.sessions = sessions
        self.backend = backend
        self.templates = templates
        self.limits = limits
        self.scheduler = scheduler
        self.on_gone = on_gone
        self._admission = asyncio.Lock()

    # ---- create -------------------------------------------------------------------------------

    def check_timeout(self, timeout_s: int) -> None:
        if timeout_s < 0 or timeout_s > self.limits.max_timeout_s:
            raise ApiError(
                400, f"timeout must be between 0 and {self.limits.max_timeout_s} seconds"
            )

    async def create(self, who: Principal, req: CreateRequest) -> Sandbox:
        tpl = self.templates.resolve(req.template)
        if tpl is None:
            raise ApiError(404, f"template '{req.template}' not found")
        self.check_timeout(req.timeout_s)
        if tpl.cpu_count > self.limits.max_cpu_count or tpl.memory_mb > self.limits.max_memory_mb:
            raise ApiError(
                400,
                f"template '{req.template}' needs {tpl.cpu_count} vCPUs and {tpl.memory_mb} MiB; "
                f"the limit per sandbox is {self.limits.max_cpu_count} vCPUs and "
                f"{self.limits.max_memory_mb} MiB",
            )
        if req.auto_pause and not self.backend.capabilities.pause:
            raise ApiError(
                501,
                f"the {self.backend.name} backend cannot pause, so autoPause is unavailable",
                should_retry=False,
            )
        if not req.allow_internet and not self.backend.capabilities.no_internet:
            raise ApiError(
                501,
                f"the {self.backend.name} backend cannot restrict internet access",
                should_retry=False,
            )

        sandbox_id = new_sandbox_id()
        token = secrets.token_urlsafe(32)
        async with self._admission, self.sessions.begin() as s:
            if req.idempotency_key:
                same = await q.by_idempotency_key(s, who.team_id, req.idempotency_key)
                if same is not None and State(same.state) == State.CREATING:
                    raise ApiError(
                        409,
                        "a create with this Idempotency-Key is still in progress",
                        error_code="idempotency_in_progress",
                        headers={"Should-Retry": "true", "Retry-After": "1"},
                    )
                if same is not None:
                    return same
            running = await q.count_for_team(s, who.team_id, COUNTS_TOWARD_QUOTA)
            if running >= self.limits.max_concurrent_sandboxes:
                raise ApiError(
                    429,
                    f"concurrent sandbox limit reached ({self.limits.max_concurrent_sandboxes}"
                    " per team); kill a sandbox first",
                    should_retry=False,
                )
            cpus, mem = await q.resources_in_use(s, HOLDS_RESOURCES)
            refusal = self.scheduler.refusal(Usage(cpus, mem), tpl.cpu_count, tpl.memory_mb)
            if refusal is not None:
                raise ApiError(
                    503,
                    refusal,
                    error_code="sandbox_capacity_unavailable",
                    should_retry=False,
                )
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
                    started_at=now,
                    end_at=now + dt.timedelta(seconds=req.timeout_s),
                    metadata_items=[
                        SandboxMetadata(key=k, value=v) for k, v in req.metadata.items()
                    ],
                )
            )

        spec = BackendSpec(
            sandbox_id=sandbox_id,
            template_id=tpl.template_id,
            cpu_count=tpl.cpu_count,
            memory_mb=tpl.memory_mb,
            disk_mb=tpl.disk_mb,
            env_vars=dict(req.env_vars),
            access_token=token,
            allow_internet=req.allow_internet,
            timeout_s=req.timeout_s,
        )
        try:
            started = await self.backend.create(spec)
        except BaseException as e:  # cancellation too: never leave a half-made sandbox behind
            log.exception("create of %s failed", sandbox_id)
            if not await self._fail(
                sandbox_id, EndReason.CREATE_FAILED, str(e) or type(e).__name__, [State.CREATING]
            ):
                with contextlib.suppress(Exception):
                    await self.backend.kill(sandbox_id)
            if not isinstance(e, Exception):
                raise
            raise ApiError(
                500,
                f"sandbox could not be started: {e}",
                error_code="sandbox_create_failed",
                should_retry=False,
            ) from e
        return await self._mark_running(sandbox_id, started, req.timeout_s)

    async def _mark_running(self, sandbox_id: str, b: BackendSandbox, timeout_s: int) -> Sandbox:
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
            await self.backend.kill(sandbox_id)
            raise ApiError(500, "sandbox was stopped while starting", should_retry=False)
        async with self.sessions() as s:
            row = await q.get(s, sandbox_id)
            assert row is not None
            return row

    async def _fail(
        self, sandbox_id: str, reason: EndReason, error: str, from_states: list[State]
    ) -> bool:
        """Record the failure first (so nobody else acts on it), then clean up in the backend."""
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
                await self.backend.kill(sandbox_id)
            except Exception:
                log.exception("cleanup kill of %s failed", sandbox_id)
        return ok

    # ---- lookups ------------------------------------------------------------------------------

    async def get(self, who: Principal, sandbox_id: str) -> Sandbox:
        async with self.sessions() as s:
            row = await q.get_for_team(s, who.team_id, sandbox_id, VISIBLE)
        if row is None:
            raise ApiError(404, f"sandbox '{sandbox_id}' not found")
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
                raise ApiError(400, str(e)) from e

    async def stats(self, who: Principal, sandbox_id: str) -> tuple[Sandbox, SandboxStats | None]:
        row = await self.get(who, sandbox_id)
        if State(row.state) != State.RUNNING:
            return row, None
        return row, await self.backend.stats(sandbox_id)

    async def envd_journal(
        self, who: Principal, sandbox_id: str, after: int = 0
    ) -> tuple[Sandbox, builtins.list[dict[str, Any]]]:
        """The sandbox row and envd's journal (empty when the sandbox no longer runs)."""
        row = await self.get(who, sandbox_id)
        if State(row.state) != State.RUNNING or not row.envd_url:
            return row, []
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                response = await http.get(
                    f"{row.envd_url}/logs",
                    params={"after": after},
                    headers={"X-Access-Token": row.envd_access_token},
                )
        except httpx.HTTPError as exc:
            raise ApiError(502, f"sandbox '{sandbox_id}' did not answer: {exc}") from exc
        if response.status_code != 200:
            raise ApiError(502, f"sandbox '{sandbox_id}' answered {response.status_code}")
        entries: builtins.list[dict[str, Any]] = response.json().get("entries", [])
        return row, entries

    # ---- changes ------------------------------------------------------------------------------

    async def set_timeout(self, who: Principal, sandbox_id: str, timeout_s: int) -> None:
        self.check_timeout(timeout_s)
        await self.get(who, sandbox_id)
        end_at = utcnow() + dt.timedelta(seconds=timeout_s)
        async with self.sessions.begin() as s:
            if not await q.update_fields(s, sandbox_id, VISIBLE, end_at=end_at):
                raise ApiError(404, f"sandbox '{sandbox_id}' not found")
        await self.backend.set_timeout(sandbox_id, timeout_s)

    async def connect(
        self, who: Principal, sandbox_id: str, timeout_s: int | None
    ) -> tuple[Sandbox, bool]:
        """Extend (never shorten) a running sandbox's end time, or resume a paused one.

        Returns the sandbox and whether it was resumed (the API answers 201 then, else 200).
        """
        if timeout_s is not None:
            self.check_timeout(timeout_s)
        row = await self.get(who, sandbox_id)
        if State(row.state) in (State.PAUSED, State.PAUSING, State.RESUMING):
            return await self._resume(row, timeout_s), True
        if timeout_s is not None:
            wanted = utcnow() + dt.timedelta(seconds=timeout_s)
            if wanted > row.end_at:
                async with self.sessions.begin() as s:
                    await q.update_fields(s, sandbox_id, [State.RUNNING], end_at=wanted)
                await self.backend.set_timeout(sandbox_id, timeout_s)
                row.end_at = wanted
        return row, False

    async def pause(self, who: Principal, sandbox_id: str) -> None:
        row = await self.get(who, sandbox_id)
        if State(row.state) != State.RUNNING:
            raise ApiError(409, f"sandbox '{sandbox_id}' is already paused")
        if not self.backend.capabilities.pause:
            raise ApiError(
                501, f"the {self.backend.name} backend cannot pause sandboxes", should_retry=False
            )
        async with self.sessions.begin() as s:
            if not await q.set_state(s, sandbox_id, [State.RUNNING], State.PAUSING):
                raise ApiError(409, f"sandbox '{sandbox_id}' is already paused")
        self.on_gone(sandbox_id)
        try:
            await self.backend.pause(sandbox_id)
        except Exception as e:
            log.exception("pause of %s failed", sandbox_id)
            async with self.sessions.begin() as s:
                await q.set_state(s, sandbox_id, [State.PAUSING], State.RUNNING)
            raise ApiError(500, f"pause failed: {e}", should_retry=False) from e
        async with self.sessions.begin() as s:
            await q.set_state(s, sandbox_id, [State.PAUSING], State.PAUSED)

    async def _resume(self, row: Sandbox, timeout_s: int | None) -> Sandbox:
        if not self.backend.capabilities.pause:
            raise ApiError(
                501,
                f"the {self.backend.name} backend cannot resume sandboxes",
                should_retry=False,
            )
        async with self.sessions.begin() as s:
            if not await q.set_state(s, row.id, [State.PAUSED], State.RESUMING):
                raise ApiError(409, f"sandbox '{row.id}' is being paused or resumed; retry")
        try:
            b = await self.backend.resume(row.id)
        except Exception as e:
            log.exception("resume of %s failed", row.id)
            async with self.sessions.begin() as s:
                await q.set_state(s, row.id, [State.RESUMING], State.PAUSED)
            raise ApiError(500, f"resume failed: {e}", should_retry=False) from e
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
        await self.backend.set_timeout(row.id, timeout)
        async with self.sessions() as s:
            fresh = await q.get(s, row.id)
        assert fresh is not None
        return fresh

    async def kill(self, who: Principal, sandbox_id: str) -> None:
        await self.get(who, sandbox_id)
        if not await self.end(sandbox_id, EndReason.KILLED_BY_USER):
            raise ApiError(404, f"sandbox '{sandbox_id}' not found")

    async def end(self, sandbox_id: str, reason: EndReason) -> bool:
        """Kill through the backend and record why; False if another actor already ended it."""
        from_states = [State.RUNNING, State.PAUSING, State.PAUSED, State.RESUMING, State.CREATING]
        async with self.sessions.begin() as s:
            if not await q.set_state(s, sandbox_id, from_states, State.KILLING):
                return False
        self.on_gone(sandbox_id)
        try:
            await self.backend.kill(sandbox_id)
        except (BackendError, OSError) as e:
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


__all__ = ["CreateRequest", "NotSupported", "SandboxService", "new_sandbox_id"]
