"""The one reaper: ends sandboxes at their end time (from the database) and reconciles the
database with what the node holds.

State lives only in the database, so after a restart the first tick ends whatever expired while
the server was down, and sandboxes the node lost are recorded as crashed. Only running
sandboxes have an end time that fires: a paused sandbox waits, whatever its old end time said,
until it is killed or resumed (E2B keeps paused sandboxes too). A sandbox created with
``autoPause`` is paused at its end time instead of killed (``SandboxService.pause_at_end``).
End times and reconciliation run as two tasks, so a slow node listing never delays an end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ..._proto.node import node_pb2 as pb
from ...node.client import NodeError
from ..db import sandboxes as q
from ..db.models import utcnow
from .network import NetworkService
from .service import SandboxService, paused_as_held, running_as_resumed
from .snapshots import remove_leftover_snapshots, remove_untracked_snapshots
from .states import EndReason, State

log = logging.getLogger("emberbox.reaper")

_ENDS_ON_TIME = [State.RUNNING]
# Every state in which the node may hold the sandbox on the control plane's behalf.
_KNOWN = [
    State.CREATING,
    State.RUNNING,
    State.PAUSING,
    State.PAUSED,
    State.RESUMING,
    State.KILLING,
]


class Reaper:
    """End-time enforcement every ``interval_s``; reconciliation every ``reconcile_every_s``."""

    def __init__(
        self, service: SandboxService, interval_s: float = 0.2, reconcile_every_s: float = 2.0
    ) -> None:
        self.service = service
        self.interval_s = interval_s
        self.reconcile_every_s = reconcile_every_s
        self._loops: list[asyncio.Task[None]] = []
        self._ending: set[str] = set()
        self._node_boot: str | None = None  # the node process the last listing came from
        self._tasks: set[asyncio.Task[None]] = set()

    async def recover(self) -> None:
        """Finish what a crash interrupted: half-created, half-killed, half-paused or
        half-resumed sandboxes (the node says where a pause or resume really got to), and
        checkpoints a crash left on the node (forks' own, and those with no row)."""
        await remove_leftover_snapshots(self.service)
        async with self.service.sessions() as s:
            creating = await q.ids_in_states(s, [State.CREATING])
            killing = await q.ids_in_states(s, [State.KILLING])
            pausing = await q.ids_in_states(s, [State.PAUSING])
            resuming = await q.ids_in_states(s, [State.RESUMING])
        switching = [*pausing, *resuming]
        for sid in creating:
            await self.service.mark_crashed(sid, oom=False)
        for sid in killing:
            try:
                await self.service.node.kill(sid)
            except NodeError:
                log.exception("finishing the kill of %s failed; reconciliation retries", sid)
                continue
            async with self.service.sessions.begin() as s:
                await q.set_state(s, sid, [State.KILLING], State.KILLED, ended_at=utcnow())
        if switching:
            try:
                listing = await self.service.node.list()
            except NodeError:
                log.exception("the node did not list its sandboxes; %s stay as they are", switching)
                return
            await self._settle(switching, listing, resuming=set(resuming))

    async def _settle(
        self, switching: Iterable[str], listing: pb.ListResponse, resuming: set[str]
    ) -> None:
        """Record pauses and resumes nobody is finishing (cut off by a crash, or their node's
        answer lost) as what the node says they came to."""
        held = {b.sandbox_id: b for b in listing.sandboxes}
        for sid in switching:
            sandbox = held.get(sid)
            if sandbox is None:
                await self.service.mark_crashed(sid, oom=False)
                continue
            paused = sandbox.status == pb.SANDBOX_STATUS_PAUSED
            # (a pause that did not get through: nothing saved)
            fresh: dict[str, Any] = paused_as_held(sandbox) if paused else {"pause_mode": None}
            # Only from the state it was read in: the listing says nothing of a switch since.
            was = State.RESUMING if sid in resuming else State.PAUSING
            async with self.service.sessions.begin() as s:
                # A resume that got through runs as it asked (its lifetime from now, as a
                # resume's). A pause that did not keeps the end time it had: one cut at that
                # end time is paused by the next tick, a user's pause leaves the lifetime as
                # it was. (A resume settled paused keeps what it asked: the node may be at it.)
                if not paused and was == State.RESUMING:
                    fresh |= await _as_resumed(s, sid)
                settled = await q.set_state(
                    s,
                    sid,
                    [was],
                    State.PAUSED if paused else State.RUNNING,
                    envd_url=sandbox.envd_url,
                    host_address=sandbox.host,
                    **fresh,
                )
            if settled:
                log.warning("sandbox %s recorded %s, as its node holds it", sid,
                            "paused" if paused else "running")  # fmt: skip

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._every(self.interval_s, self.tick), name="reaper-ends"),
            asyncio.create_task(
                self._every(self.reconcile_every_s, self.reconcile), name="reaper-reconcile"
            ),
        ]

    async def stop(self, grace_s: float = 20.0) -> None:
        """Stop checking; let kills already under way finish (a half-done kill leaks)."""
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def tick(self) -> None:
        async with self.service.sessions() as s:
            due = await q.expired_policies(s, utcnow(), _ENDS_ON_TIME)
        for sid, on_timeout in due:
            if sid in self._ending:
                continue
            if on_timeout == "pause":
                self._spawn(sid, self.service.pause_at_end(sid))
            else:
                self._spawn(sid, self.service.end(sid, EndReason.TIMEOUT))

    def _spawn(self, sandbox_id: str, work: Coroutine[Any, Any, bool]) -> None:
        self._ending.add(sandbox_id)

        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("ending %s failed", sandbox_id)
            finally:
                self._ending.discard(sandbox_id)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reconcile(self) -> None:
        """Record sandboxes the node lost; kill node sandboxes the database does not know.

        The database is read before and after the node's list: a sandbox is an orphan only if
        neither read knew it, so one whose create began, or whose kill ended, while the list
        was taken is never mistaken for one. The second read waits for any admission under way:
        a warm-pool claim is handed over (and listed) before its row commits.
        """
        async with self.service.sessions() as s:
            # Running and paused rows are stable: every change of them goes through the
            # database before the node, so one the node does not hold was lost.
            running = set(await q.ids_in_states(s, [State.RUNNING, State.PAUSED]))
            only_running = set(await q.ids_in_states(s, [State.RUNNING]))
            known_before = set(await q.ids_in_states(s, _KNOWN))
            pausing = set(await q.ids_in_states(s, [State.PAUSING]))
            resuming = set(await q.ids_in_states(s, [State.RESUMING]))
        # Pausing or resuming with nobody here at it (checked after the read: a switch is
        # counted before its row changes and until its last write): the node's answer was lost.
        unfinished = {i for i in pausing | resuming if not self.service.switching(i)}
        listing = await self.service.node.list()
        self._notice_node_restart(listing.boot_id)
        async with self.service.admission, self.service.sessions() as s:
            known_after = set(await q.ids_in_states(s, _KNOWN))
        held = {b.sandbox_id for b in listing.sandboxes}
        why = {e.sandbox_id: e.reason for e in listing.ended}
        for sid in running & known_after:
            # A row a kill has meanwhile moved to killing is left alone by mark_crashed.
            if sid not in held and sid not in self._ending:
                oom = why.get(sid) == "oom"
                log.warning("sandbox %s stopped outside the server (oom: %s)", sid, oom)
                await self.service.mark_crashed(sid, oom=oom)
        for sid in held - known_before - known_after:
            log.warning("killing orphan sandbox %s", sid)
            await self.service.node.kill(sid)
        unfinished = {i for i in unfinished if not self.service.switching(i)}
        await self._settle(sorted(unfinished), listing, resuming)
        await self._paused_by_node(only_running, listing)
        await self._running_by_node(running - only_running, listing)
        await remove_untracked_snapshots(self.service)

    async def _paused_by_node(self, running: set[str], listing: pb.ListResponse) -> None:
        """Running rows whose node holds the sandbox paused: a rollback cut off, or whose
        answer was lost, left it paused at its snapshot. A pause and a resume since the first
        read do not count (each is under way here, and ends with it running)."""
        async for held in self._held_as(running, listing, pb.SANDBOX_STATUS_PAUSED):
            await self.service.record_paused_by_node(held.sandbox_id, held)

    async def _running_by_node(self, paused: set[str], listing: pb.ListResponse) -> None:
        """Paused rows whose node runs the sandbox: a resume whose answer was lost, settled
        paused from a listing taken while the node was still at it, or one this server gave
        up on (cancelled) while a separate node finished it. Recorded running, as a resume
        that got through (its lifetime counts from now), or it would run with no end time
        and every later connect would be refused."""
        async for held in self._held_as(paused, listing, pb.SANDBOX_STATUS_RUNNING):
            sid = held.sandbox_id
            async with self.service.sessions.begin() as s:  # (by resuming, as a resume)
                fresh = {"envd_url": held.envd_url, "host_address": held.host,
                         **await _as_resumed(s, sid)}  # fmt: skip
                moved = await q.set_state(s, sid, [State.PAUSED], State.RESUMING)
                moved = moved and await q.set_state(
                    s, sid, [State.RESUMING], State.RUNNING, **fresh
                )
            if moved:
                log.warning("sandbox %s recorded running, as its node holds it", sid)

    async def _held_as(
        self, rows: set[str], listing: pb.ListResponse, status: pb.SandboxStatus
    ) -> AsyncIterator[pb.Sandbox]:
        """Those of ``rows`` the node holds in ``status`` with nobody at them here, each
        checked again, just before, against a fresh listing."""
        suspects = [b.sandbox_id for b in listing.sandboxes
                    if b.sandbox_id in rows and b.status == status]  # fmt: skip
        for sid in suspects:
            if self.service.switching(sid):
                continue
            held = await self.service.node_view(sid)
            if held is not None and held.status == status and not self.service.switching(sid):
                yield held

    def _notice_node_restart(self, boot_id: str) -> None:
        """A separate node that restarted under us lost its sandboxes' header-rule values
        (kept in memory only): send them again, off the reconcile loop."""
        seen, self._node_boot = self._node_boot, boot_id
        if seen is None or seen == boot_id:
            return
        log.warning("the node restarted; sending its sandboxes' header rules again")

        async def send() -> None:
            await NetworkService(self.service).send_header_rules_again()

        task = asyncio.create_task(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _every(self, seconds: float, work: Any) -> None:
        while True:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reaper step failed")
            await asyncio.sleep(seconds)


async def _as_resumed(s: AsyncSession, sandbox_id: str) -> dict[str, Any]:
    """A row the node's listing shows resumed, as the last resume that began asked."""
    return running_as_resumed(*await q.resume_asked(s, sandbox_id))
