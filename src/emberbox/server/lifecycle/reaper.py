"""Enforces end times from the database and reconciles it with the backend.

State lives only in the database, so after a restart the first tick kills whatever expired while
the server was down, and sandboxes the backend lost are recorded as crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..db import sandboxes as q
from ..db.models import utcnow
from .service import SandboxService
from .states import EndReason, State

log = logging.getLogger("emberbox.reaper")

_LIVE = [State.RUNNING]


class Reaper:
    """Background task: end-time enforcement every ``interval_s``, reconciliation less often."""

    def __init__(
        self, service: SandboxService, interval_s: float = 0.2, reconcile_every_s: float = 2.0
    ) -> None:
        self.service = service
        self.interval_s = interval_s
        self.reconcile_every_s = reconcile_every_s
        self._task: asyncio.Task[None] | None = None
        self._ending: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def recover(self) -> None:
        """Finish what a crash interrupted: half-created or half-killed sandboxes."""
        async with self.service.sessions() as s:
            creating = await q.ids_in_states(s, [State.CREATING])
            killing = await q.ids_in_states(s, [State.KILLING])
        for sid in creating:
            await self.service.mark_crashed(sid, oom=False)
        for sid in killing:
            await self.service.backend.kill(sid)
            async with self.service.sessions.begin() as s:
                await q.set_state(s, sid, [State.KILLING], State.KILLED, ended_at=utcnow())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="emberbox-reaper")

    async def stop(self, grace_s: float = 20.0) -> None:
        """Stop checking; let kills already under way finish (a half-done kill leaks)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def tick(self) -> None:
        async with self.service.sessions() as s:
            due = await q.expired(s, utcnow(), _LIVE)
        for sid in due:
            if sid not in self._ending:
                self._ending.add(sid)
                t = asyncio.create_task(self._end(sid))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)

    async def _end(self, sandbox_id: str) -> None:
        try:
            await self.service.end(sandbox_id, EndReason.TIMEOUT)
        except Exception:
            log.exception("ending %s failed", sandbox_id)
        finally:
            self._ending.discard(sandbox_id)

    async def reconcile(self) -> None:
        """Record sandboxes the backend lost; kill backend sandboxes the database does not know."""
        # Order matters: running before the backend list (a create finishing in between must not
        # look crashed), known after it (a create starting in between must not look orphaned).
        async with self.service.sessions() as s:
            running = set(await q.ids_in_states(s, [State.RUNNING]))
        alive = {b.sandbox_id: b for b in await self.service.backend.list()}
        async with self.service.sessions() as s:
            known = set(
                await q.ids_in_states(
                    s,
                    [
                        State.CREATING,
                        State.RUNNING,
                        State.PAUSING,
                        State.PAUSED,
                        State.RESUMING,
                        State.KILLING,
                    ],
                )
            )
        for sid in running:
            entry = alive.get(sid)
            if (entry is None or entry.stopped) and sid not in self._ending:
                oom = entry is not None and entry.oom_killed
                log.warning("sandbox %s stopped outside the server (oom: %s)", sid, oom)
                await self.service.mark_crashed(sid, oom=oom)
        for sid in alive.keys() - known:
            log.warning("killing orphan sandbox %s", sid)
            await self.service.backend.kill(sid)

    async def _run(self) -> None:
        last_reconcile = 0.0
        while True:
            try:
                await self.tick()
                if time.monotonic() - last_reconcile >= self.reconcile_every_s:
                    last_reconcile = time.monotonic()
                    await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reaper tick failed")
            await asyncio.sleep(self.interval_s)
