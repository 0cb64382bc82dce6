"""Idle sandboxes wait with their memory in compressed swap.

A sandbox nobody uses holds ~43 MiB of host memory (its guest's pages, the sentry's and
gofer's heaps) that nothing touches until it is used again. On a host whose swap keeps pages
in RAM, compressed (zram, zswap), the node moves them there (:meth:`Runtime.offload`): the
sandbox then costs what its pages compress to, and the next use a few ms more as the pages
it touches come back. Its limit holds memory plus swap, so swap never gives it more.

Which sandboxes, and when:

* a pooled sandbox behind the newest of its template and size, as soon as it is frozen
  (claims take the newest first, ``pool.py``): :meth:`Offloader.behind`;
* any other sandbox, running, pooled, or paused with its processes kept (a gVisor node keeps
  them for a fast resume: ``runtimes/gvisor/kept.py``), once its CPU use stayed under a
  tenth of a core for ``idle_s`` (a gVisor sandbox waiting on nothing uses ~4%; a paused one
  counts from its pause, or from a successor node's start), and again each time its
  resident memory regrew by ``REGROWN_BYTES`` while it stays idle (the sentry's garbage
  collector, most likely, brings ~10 MiB back within a minute or two): :meth:`Offloader.sweep`.

Each runs step by step, every step under the sandbox's lock, so a claim, pause or kill waits
for one step at most and always finds the sandbox's limit whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from ..host import cgroups
from ..host.locks import KeyedLock
from ..runtimes.base import Runtime
from ..vocabulary import OFFLOADED_BELOW_BYTES
from .env import seconds

log = logging.getLogger(__name__)

# An offload moves memory over up to this many runtime steps, this far apart (a frozen gVisor
# sandbox's pages come loose over ~1 s, ``cgroups.offload``).
OFFLOAD_STEPS = 40
OFFLOAD_STEP_EVERY_S = 0.05
# An offload that ran out of steps with more than ``OFFLOADED_BELOW_BYTES`` still resident (a
# paused sandbox's 256 MiB and its image's page cache took more than 40 steps on cgroup v1)
# is tried again this many times: at once for a pooled one behind the newest, at the next
# sweeps for an idle one. Then its floor is what is left.
RETRIES = 3
# Under this share of one core a sandbox counts as idle: gVisor's own timers keep one that
# waits on nothing at ~4% (``benchmarks/lifecycle_bench.py``).
IDLE_CPU_SHARE = 0.10
# An idle sandbox is offloaded again once its resident memory grew this much since.
REGROWN_BYTES = 8 << 20
SWEEP_EVERY_S = 2.0  # at most; a shorter ``idle_s`` sweeps more often
# What the sweeps look at: a paused sandbox too, whose runtime keeps its processes stopped for
# a fast resume (``runtimes/gvisor/kept.py``: in swap, they are kept longer); the runtime
# reports no activity for one whose processes are gone.
OFFLOADED_STATES = ("running", "pooled", "paused")
# CPU use read over a longer window than this (a sweep slowed by offloads) counts as busy.
MAX_WINDOW_S = 10.0


class OffloadUnavailable(RuntimeError):
    """``EMBERBOX_OFFLOAD=on`` on a host that cannot offload: refused at start, never left to
    do nothing."""


@dataclass(frozen=True)
class OffloadSettings:
    """``mode``: ``auto`` offloads where the host's swap keeps pages in RAM, compressed;
    ``on`` to any swap; ``off`` never. ``idle_s``: how long a sandbox stays idle before it is
    offloaded (0: only pooled sandboxes behind the newest are)."""

    mode: Literal["auto", "on", "off"] = "auto"
    idle_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OffloadSettings:
        """``EMBERBOX_OFFLOAD`` (``auto``, ``on``, ``off``) and ``EMBERBOX_OFFLOAD_IDLE_S``."""
        if "EMBERBOX_WARM_POOL_OFFLOAD" in env:  # its first name: refused, never ignored
            raise ValueError(
                "EMBERBOX_WARM_POOL_OFFLOAD is now EMBERBOX_OFFLOAD, and covers idle running "
                "sandboxes too (EMBERBOX_OFFLOAD_IDLE_S): rename it"
            )
        mode = (env.get("EMBERBOX_OFFLOAD") or "auto").strip().lower()
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"EMBERBOX_OFFLOAD={mode!r}: expected 'auto', 'on' or 'off'")
        idle_s = seconds(env, "EMBERBOX_OFFLOAD_IDLE_S", cls.idle_s)
        return cls(mode=mode, idle_s=idle_s)  # type: ignore[arg-type]

    def active(self) -> bool:
        """Whether sandboxes go to swap on this host now (``auto``: only to swap in RAM)."""
        if self.mode == "off" or _unfit_host() is not None:
            return False
        return self.mode == "on" or cgroups.swap_in_ram()

    def check_host(self) -> None:
        """Refuse ``on`` where no sandbox could ever be offloaded (``auto`` adapts)."""
        if self.mode == "on" and (why := _unfit_host()) is not None:
            raise OffloadUnavailable(f"EMBERBOX_OFFLOAD=on, but {why}; set it to 'auto' or 'off'")


def _unfit_host() -> str | None:
    """Why no sandbox can be offloaded on this host at all, or None: what ``active`` and
    ``check_host`` both ask."""
    if not cgroups.swap_limited() or not cgroups.reclaims():
        return (
            "this kernel does not account swap per cgroup (a sandbox's memory plus swap could "
            "not be held to its limit) or, on cgroup v2, has no memory.reclaim (Linux < 5.19)"
        )
    if cgroups.swap_total() == 0:
        return "this host has no swap (scripts/host-swap.sh adds one compressed in RAM)"
    return None


class Held(Protocol):
    """What the offloader reads of a sandbox the node holds."""

    @property
    def state(self) -> str: ...


@dataclass
class _Watch:
    """One sandbox as the sweeps saw it."""

    cpu_ns: int
    seen_at: float
    busy_at: float  # the last sweep that found it using CPU (or its first)
    floor: int | None = None  # its resident bytes after its last offload
    retries: int = 0  # offloads in a row that ran out of steps (``RETRIES``)


class Offloader:
    """Offloads the node's idle sandboxes (module doc). ``held``: the node's sandboxes by id,
    read live; ``locks``: the node's per-sandbox locks; ``release_locked``: frees a pooled
    sandbox whose step failed (its limit may be left lowered: never hand it out)."""

    def __init__(
        self,
        runtime: Runtime,
        settings: OffloadSettings,
        held: Mapping[str, Held],
        locks: KeyedLock,
        release_locked: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self._held = held
        self._locks = locks
        self._release_locked = release_locked
        self._watch: dict[str, _Watch] = {}
        self._busy: set[str] = set()  # an offload of it is under way
        self._failed: set[str] = set()  # running sandboxes a step failed on: left alone

    def offloaded(self, sandbox_id: str) -> bool:
        watch = self._watch.get(sandbox_id)
        return watch is not None and watch.floor is not None

    def forget(self, sandbox_id: str) -> None:
        self._watch.pop(sandbox_id, None)
        self._failed.discard(sandbox_id)

    def started(self, sandbox_id: str) -> None:
        """The sandbox runs anew (claimed, resumed, rolled back): it counts as idle only
        ``idle_s`` after the next sweep sees it, whatever it was before."""
        self.forget(sandbox_id)

    async def behind(self, sandbox_ids: Iterable[str]) -> None:
        """Offload each pooled sandbox in ``sandbox_ids`` not offloaded yet, in turn."""
        if not self.settings.active():
            return
        for sandbox_id in sandbox_ids:
            for _ in range(1 + RETRIES):
                if sandbox_id in self._busy or self.offloaded(sandbox_id):
                    break
                if not await self._offload(sandbox_id, "pooled"):
                    break  # nothing moved: claimed, gone, or no swap left

    async def sweep(self, now: float | None = None) -> list[str]:
        """Offload the sandboxes idle for ``idle_s`` that are not offloaded, or regrew since;
        the ids offloaded."""
        if self.settings.idle_s <= 0 or not self.settings.active():
            return []
        for gone in self._watch.keys() - self._held.keys():
            self.forget(gone)
        done = []
        for sandbox_id, record in list(self._held.items()):
            if record.state not in OFFLOADED_STATES or sandbox_id in self._busy:
                continue
            if self._locks.held(sandbox_id):
                continue  # paused, claimed or booted right now: left to the next sweep
            seen = await self.runtime.activity(sandbox_id)
            if seen is None:
                continue
            at = time.monotonic() if now is None else now
            watch = self._watch.get(sandbox_id)
            if watch is None or seen.cpu_ns < watch.cpu_ns:  # first seen, or a new cgroup
                self._watch[sandbox_id] = _Watch(seen.cpu_ns, at, at)
                continue
            used_s = (seen.cpu_ns - watch.cpu_ns) / 1e9
            window_s = at - watch.seen_at
            # A long window (a slow sweep) would dilute a burst into idleness: counted busy.
            if window_s > MAX_WINDOW_S or used_s > IDLE_CPU_SHARE * max(window_s, 1e-3):
                watch.busy_at = at
            watch.cpu_ns, watch.seen_at = seen.cpu_ns, at
            if at - watch.busy_at < self.settings.idle_s or sandbox_id in self._failed:
                continue
            if watch.floor is not None and seen.resident < watch.floor + REGROWN_BYTES:
                continue
            if await self._offload(sandbox_id, record.state):
                done.append(sandbox_id)
        return done

    async def sweep_forever(self) -> None:
        every = min(SWEEP_EVERY_S, max(self.settings.idle_s / 2, 0.05))
        while True:
            await asyncio.sleep(every)
            try:
                await self.sweep()
            except Exception:
                log.exception("offloading idle sandboxes failed")

    async def _offload(self, sandbox_id: str, state: str) -> bool:
        """Steps until the runtime has nothing more to move, the sandbox leaves ``state``
        (claimed, paused, killed) or ``OFFLOAD_STEPS`` ran; whether any step moved memory.
        It counts as offloaded (its resident floor taken) unless it ran out of steps with much
        left to move (``RETRIES``)."""
        self._busy.add(sandbox_id)
        moved = False
        more: bool | None = None
        try:
            for _ in range(OFFLOAD_STEPS):
                async with self._locks.hold(sandbox_id):
                    record = self._held.get(sandbox_id)
                    if record is None or record.state != state:
                        break
                    try:
                        more = await self.runtime.offload(sandbox_id)
                    except Exception as exc:
                        log.warning("offloading sandbox %s (%s) failed: %s", sandbox_id, state, exc)
                        if state == "pooled":  # its limit may be left lowered
                            await self._release_locked(sandbox_id, "offload failed")
                        else:
                            self._failed.add(sandbox_id)
                        break
                    moved = moved or more is not None
                if not more:
                    break
                await asyncio.sleep(OFFLOAD_STEP_EVERY_S)
        finally:
            self._busy.discard(sandbox_id)
        record = self._held.get(sandbox_id)
        if moved and record is not None and record.state == state:  # (not paused meanwhile)
            seen = await self.runtime.activity(sandbox_id)
            now = time.monotonic()
            watch = self._watch.setdefault(sandbox_id, _Watch(seen.cpu_ns if seen else 0, now, now))
            resident = seen.resident if seen else 0
            if more and resident >= OFFLOADED_BELOW_BYTES and watch.retries < RETRIES:
                watch.retries += 1  # not offloaded yet: tried again
            else:
                watch.floor, watch.retries = resident, 0
        return moved
