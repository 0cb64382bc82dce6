"""Paused sandboxes whose processes the node keeps, stopped, beside their saved memory.

A pause saves the sandbox's memory to disk either way (that copy survives a node restart and
is what a late resume restores, ~400 ms here). After the pause its processes also stay on
the host, their kernel paused by runsc and their cgroup frozen (no CPU at all): a resume
continues them in tens of ms. Agents pause between turns and resume seconds or minutes later.

How long: resident, at most ``resident_s`` (a minute); once the node has moved their memory
to swap (``node/offload.py``, ``EMBERBOX_OFFLOAD_IDLE_S`` after the pause; a swap kept in
RAM, compressed, unless ``EMBERBOX_OFFLOAD=on``), up to ``keep_s`` (ten minutes), as what
their pages compress to is all they then cost. At once, whatever their age, while the host
runs short of memory (resident ones first, then those in swap, the oldest first of each), or
of swap (those in swap, the oldest first).

Kept processes in swap outlive their node as running sandboxes do, and resident ones a node
that is killed: they stay stopped and frozen, and the node's successor keeps them for the rest
of their keep (``GVisorRuntime._adopt_kept``). A node that stops lets resident ones go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ...host.meminfo import host_free_mb

log = logging.getLogger("emberbox.runtimes.gvisor")

# How often the keeper looks for kept sandboxes whose time is up or whose memory the host needs.
CHECK_EVERY_S = 1.0
# The longest a kept sandbox's memory stays resident: one not moved to swap by then goes.
RESIDENT_S = 60.0


@dataclass
class _Kept:
    since: float  # the pause (monotonic)
    resident_from: float  # what its resident time counts from: the pause, or its adoption
    swapped: bool = False  # its memory went to swap: kept for the whole keep


@dataclass
class KeptPauses:
    """**Parameters:** keep_s - how long a paused sandbox's processes are kept (0: never);
    min_free_mb - none is kept while the host has less available, and kept ones go (module
    doc); release - stops one kept sandbox's processes (its saved memory stays: it is still
    paused); free_mb - the host's available memory; swap_short - whether the host's swap is
    too full to take more (kept ones in it then go); resident_s - how long one whose memory
    is not in swap is kept, at most."""

    keep_s: float
    min_free_mb: int
    release: Callable[[str], Awaitable[None]]
    free_mb: Callable[[], int] = host_free_mb
    swap_short: Callable[[], bool] = lambda: False
    resident_s: float = RESIDENT_S
    _kept: dict[str, _Kept] = field(default_factory=dict)
    _keeper: asyncio.Task[None] | None = None

    def may_keep(self) -> bool:
        return self.keep_s > 0 and self.free_mb() >= self.min_free_mb

    def keep(
        self, sandbox_id: str, now: float | None = None, resident_from: float | None = None
    ) -> None:
        """Count ``sandbox_id`` kept since ``now`` (its pause), resident since
        ``resident_from`` (``now``); the keeper releases it when its time is up."""
        since = time.monotonic() if now is None else now
        self._kept[sandbox_id] = _Kept(since, since if resident_from is None else resident_from)
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._release_when_due())

    def swapped(self, sandbox_id: str) -> None:
        """``sandbox_id``'s memory went to swap: it is kept for the whole ``keep_s``."""
        if (kept := self._kept.get(sandbox_id)) is not None:
            kept.swapped = True

    def holds(self, sandbox_id: str) -> bool:
        return sandbox_id in self._kept

    def take(self, sandbox_id: str) -> bool:
        """Whether ``sandbox_id`` was kept; it no longer is (a resume continues it, or a stop
        ends it)."""
        return self._kept.pop(sandbox_id, None) is not None

    def kept(self) -> list[str]:
        return list(self._kept)

    async def close(self) -> None:
        """Stop watching. Those in swap stay, for the node's successor (module doc); resident
        ones go, as no node may come back to release them."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        for sandbox_id, kept in list(self._kept.items()):
            if not kept.swapped:
                await self._release(sandbox_id, kept)

    async def due(self, now: float | None = None) -> list[str]:
        """Release those whose time is up, then those the host needs back (module doc); the
        ids released."""
        at = time.monotonic() if now is None else now
        released = []
        # (each release awaits: one resumed and paused again meanwhile is a new keep, judged
        # on its own at the next check)
        for sandbox_id, kept in list(self._kept.items()):
            if self._end(kept) <= at and await self._release(sandbox_id, kept):
                released.append(sandbox_id)
        # Resident ones free the most: first, then those in swap, the oldest first of each.
        order = sorted(self._kept.items(), key=lambda item: (item[1].swapped, item[1].since))
        for sandbox_id, kept in order:
            short_of_swap = kept.swapped and self.swap_short()
            if self.free_mb() >= self.min_free_mb and not short_of_swap:
                continue
            if await self._release(sandbox_id, kept):
                released.append(sandbox_id)
        return released

    def _end(self, kept: _Kept) -> float:
        end = kept.since + self.keep_s
        return end if kept.swapped else min(end, kept.resident_from + self.resident_s)

    async def _release(self, sandbox_id: str, kept: _Kept) -> bool:
        """Release ``sandbox_id`` if it is still ``kept``: not taken, nor kept again (a
        resume and a new pause) since that was read."""
        if self._kept.get(sandbox_id) is not kept:
            return False
        # No longer kept before ``release`` runs: it lets go only of processes nobody keeps
        # (``_forget_container``), and a resume meanwhile restores rather than continue them.
        del self._kept[sandbox_id]
        try:
            await self.release(sandbox_id)
        except Exception:  # its processes stay, stopped; a kill or a resume ends them
            log.exception("releasing the kept processes of paused sandbox %s failed", sandbox_id)
            return False
        return True

    async def _release_when_due(self) -> None:
        while self._kept:
            await asyncio.sleep(CHECK_EVERY_S)
            await self.due()
