"""The warm pool: sandboxes started ahead of demand, waiting for a create to claim them.

A pooled sandbox is a plain sandbox of one template and machine size whose envd is healthy,
whose template is ready, and which had its ``/init`` as it was pooled: its own id, the
template's env vars and an access token nobody has seen; no caller's env vars, nobody's data.
While it waits it is frozen (the orchestrator's ``_freeze_pooled``: no CPU at all). A create
claims the newest of its key and the node thaws it and hands it over in the same call, as it
is or after one ``/init`` when the create brings env vars of its own (the control plane keeps
the pooled id and token), so a create costs at most one ``/init`` instead of a restore. A
pooled sandbox serves exactly one claim; the pool refills in the background, one start at a
time and only once claims pause for half a second, so refilling never competes with callers
for more than one core, nor with a burst of creates at all.

Claims take the newest first: on a host whose swap keeps pages in RAM, compressed (zram,
zswap), every pooled sandbox but the newest of its key has its memory offloaded there at
once (``offload.py``), and the newest only once it waited idle as long as any sandbox does
before that: a claim soon after another pays nothing for it. An offloaded one costs the host
what its pages compress to, and its claim a few ms more as they come back.

How many per template and size (:class:`PoolSettings`): a fixed number for every template and
size that has been asked for in the last day, or (``auto``, the default) as many as
were claimed or asked for in the last ten minutes, at most ``max_per_key``; never more than
``max_total`` in all, and none started while the host has less than ``min_free_mb`` of memory
available. A template whose sandboxes fail to start (broken, deleted) rests a while, longer
each time, and the pool goes on filling for the others.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from ..host.meminfo import host_free_mb
from ..runtimes.base import NetworkPolicy, RuntimeSandbox, SandboxSpec
from ..vocabulary import DEFAULT_PIDS_LIMIT, HOST_MIN_FREE_MB
from .env import count

log = logging.getLogger("emberbox.node.pool")

DEMAND_WINDOW_S = 600.0  # ``auto`` sizes each key by the creates asked for in this window
# A fixed size keeps a key's sandboxes this long after its last create: a template's older
# builds (each its own key) and templates nobody uses go, and leave the pool to the others.
FIXED_KEEP_S = 86_400.0
# A refill starts this long after the last claim: a burst of creates gets its first commands
# done before a restore competes with them for the CPU.
REFILL_AFTER_CLAIM_S = 0.5
# A key whose starts failed this many times in a row (a broken or deleted template) rests,
# so the filler goes on to the others: RESTING_S at first, doubled each time after, at most
# RESTING_MAX_S. A start that works ends its rest.
FAILED_STARTS = 3
RESTING_S = 30.0
RESTING_MAX_S = 600.0


@dataclass(frozen=True)
class PoolSettings:
    """``size``: None for ``auto``, else the fixed number kept per template and size (0: off)."""

    size: int | None = None
    max_per_key: int = 4
    max_total: int = 20
    min_free_mb: int = HOST_MIN_FREE_MB

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PoolSettings:
        """``EMBERBOX_WARM_POOL``: ``auto`` (default), ``0`` (off) or a number per template;
        ``EMBERBOX_WARM_POOL_MAX`` bounds the whole pool, ``EMBERBOX_WARM_POOL_MIN_FREE_MB``
        the host memory a refill leaves free."""
        raw = (env.get("EMBERBOX_WARM_POOL") or "auto").strip().lower()
        if raw == "auto":
            size = None
        elif raw in ("off", "false"):
            size = 0
        else:
            try:
                size = int(raw)
            except ValueError:
                raise ValueError(
                    f"EMBERBOX_WARM_POOL={raw!r}: expected 'auto', 'off' or a number"
                ) from None
            if size < 0:
                raise ValueError(f"EMBERBOX_WARM_POOL={raw!r} must not be negative")
        max_total = count(env, "EMBERBOX_WARM_POOL_MAX", max(cls.max_total, size or 0))
        min_free = count(env, "EMBERBOX_WARM_POOL_MIN_FREE_MB", cls.min_free_mb)
        return cls(size=size, max_total=max_total, min_free_mb=min_free)

    @property
    def enabled(self) -> bool:
        return self.size != 0 and self.max_total > 0


@dataclass(frozen=True)
class PoolKey:
    """What makes pooled sandboxes interchangeable: the template and the machine size."""

    template_id: str
    cpu_count: int
    memory_mb: int
    disk_mb: int

    @classmethod
    def of(cls, spec: SandboxSpec) -> PoolKey | None:
        """None for a spec a pooled sandbox cannot serve: a restore from a snapshot, or
        anything but the default network (a policy is set up as the sandbox starts). Volumes
        are refused where the request names them (``NodeService.claim``)."""
        if (
            spec.snapshot is not None
            or spec.network != NetworkPolicy()
            or spec.pids_limit != DEFAULT_PIDS_LIMIT
        ):
            return None
        return cls(spec.template_id, spec.cpu_count, spec.memory_mb, spec.disk_mb)

    def spec(self, sandbox_id: str) -> SandboxSpec:
        return SandboxSpec(
            sandbox_id=sandbox_id,
            template_id=self.template_id,
            cpu_count=self.cpu_count,
            memory_mb=self.memory_mb,
            disk_mb=self.disk_mb,
        )


@dataclass(frozen=True)
class PoolStatus:
    key: PoolKey
    ready: int
    target: int


@dataclass(frozen=True)
class _Held:
    sandbox: RuntimeSandbox
    key: PoolKey


Start = Callable[[PoolKey], Awaitable[RuntimeSandbox]]
Release = Callable[[str], Awaitable[None]]


@dataclass
class WarmPool:
    """**Parameters:** settings - sizes and bounds; start - starts one pooled sandbox of a key
    (the node's orchestrator: record, runtime, envd healthy, template ready); release - frees
    one by id (the orchestrator's kill)."""

    settings: PoolSettings
    start: Start
    release: Release
    free_mb: Callable[[], int] = host_free_mb
    _ready: dict[PoolKey, collections.deque[_Held]] = field(default_factory=dict)
    _demand: dict[PoolKey, collections.deque[float]] = field(default_factory=dict)
    _filling: asyncio.Task[None] | None = None
    _refill_timer: asyncio.TimerHandle | None = None
    _failures: dict[PoolKey, int] = field(default_factory=dict)  # starts failed in a row
    _resting: dict[PoolKey, float] = field(default_factory=dict)  # not started until then
    _closed: bool = False

    # -- claims ----------------------------------------------------------------------------

    def claim(self, spec: SandboxSpec, again: bool = False) -> RuntimeSandbox | None:
        """Take a ready sandbox fitting ``spec`` out of the pool (the caller hands it over or
        releases it); note the demand either way, once per create (``again``: the same create
        asks for another, the one it took could not be handed over)."""
        key = PoolKey.of(spec)
        if key is None or not self.settings.enabled or self._closed:
            return None
        if not again:
            self._demand.setdefault(key, collections.deque()).append(time.monotonic())
        ready = self._ready.get(key)
        held = ready.pop() if ready else None  # the newest: the last to be offloaded
        if self._refill_timer is not None:
            self._refill_timer.cancel()
        self._refill_timer = asyncio.get_running_loop().call_later(
            REFILL_AFTER_CLAIM_S, self.refill
        )
        return held.sandbox if held is not None else None

    def waiting_behind(self, sandbox_id: str) -> list[str]:
        """The pooled sandboxes of ``sandbox_id``'s key, up to itself, that a claim takes after
        the newest (what may be offloaded), oldest first; empty if it is not pooled. Those
        pooled later are left out: their freeze may not be due yet."""
        for queue in self._ready.values():
            ids = [h.sandbox.sandbox_id for h in queue]
            if sandbox_id in ids:
                return ids[: min(ids.index(sandbox_id) + 1, len(ids) - 1)]
        return []

    def take_where(self, spec: SandboxSpec, which: Callable[[str], bool]) -> list[str]:
        """Take the ready sandboxes a claim of ``spec`` could get whose ids ``which`` picks
        out of the pool; their ids (the caller releases them)."""
        key = PoolKey.of(spec)
        queue = self._ready.get(key) if key is not None else None
        if not queue:
            return []
        taken = [h for h in queue if which(h.sandbox.sandbox_id)]
        for held in taken:
            queue.remove(held)
        return [h.sandbox.sandbox_id for h in taken]

    def holds(self, sandbox_id: str) -> bool:
        return any(h.sandbox.sandbox_id == sandbox_id for q in self._ready.values() for h in q)

    def forget(self, sandbox_id: str) -> None:
        """A pooled sandbox is gone (it died, or the node released it): never hand it out."""
        for queue in self._ready.values():
            for held in list(queue):
                if held.sandbox.sandbox_id == sandbox_id:
                    queue.remove(held)

    # -- sizing ----------------------------------------------------------------------------

    def target(self, key: PoolKey, now: float | None = None) -> int:
        if not self.settings.enabled:
            return 0
        now = now or time.monotonic()
        asked = self._demand.get(key)
        if self.settings.size is not None:
            while asked and len(asked) > 1:  # (only its last create counts)
                asked.popleft()
            return self.settings.size if asked and asked[-1] > now - FIXED_KEEP_S else 0
        if not asked:
            return 0
        horizon = now - DEMAND_WINDOW_S
        while asked and asked[0] < horizon:
            asked.popleft()
        return min(self.settings.max_per_key, len(asked))

    def status(self) -> list[PoolStatus]:
        keys = set(self._ready) | set(self._demand)
        return [
            PoolStatus(k, len(self._ready.get(k, ())), self.target(k))
            for k in sorted(keys, key=lambda k: (k.template_id, k.cpu_count, k.memory_mb))
        ]

    def _total(self) -> int:
        return sum(len(q) for q in self._ready.values())

    def _wanted(self) -> PoolKey | None:
        """The key furthest below its target, if the pool may grow at all (a resting key
        is passed over)."""
        if self._closed or self._total() >= self.settings.max_total:
            return None
        now = time.monotonic()
        keys = [k for k in list(self._demand) if self._resting.get(k, 0.0) <= now]
        gaps = [(self.target(k) - len(self._ready.get(k, ())), k) for k in keys]
        gaps = [(gap, k) for gap, k in gaps if gap > 0]
        if not gaps:
            return None
        return max(gaps, key=lambda g: g[0])[1]

    # -- refill and tidy -------------------------------------------------------------------

    def refill(self) -> None:
        """Start the background filler unless it runs (one start at a time, for every key)."""
        if self._filling is None or self._filling.done():
            self._filling = asyncio.create_task(self._fill(), name="warm-pool-fill")

    async def _fill(self) -> None:
        while (key := self._wanted()) is not None:
            free = self.free_mb()
            if free < self.settings.min_free_mb:
                log.info("warm pool: not refilling, the host has %d MiB free", free)
                return
            try:
                sandbox = await self.start(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed = self._failures[key] = self._failures.get(key, 0) + 1
                log.warning("warm pool: starting a %s sandbox failed: %s", key.template_id, exc)
                if failed >= FAILED_STARTS:  # a broken template: the others go on
                    doubled = min(failed - FAILED_STARTS, 10)  # (a float past ~1000 would not do)
                    rest = min(RESTING_S * 2**doubled, RESTING_MAX_S)
                    self._resting[key] = time.monotonic() + rest
                    log.warning("warm pool: %s not pooled for %.0f s (%d starts failed)",
                                key.template_id, rest, failed)  # fmt: skip
                else:
                    await asyncio.sleep(0.5 * failed)
                continue
            self._failures.pop(key, None)
            self._resting.pop(key, None)
            if self._closed:
                await self.release(sandbox.sandbox_id)
                return
            self._ready.setdefault(key, collections.deque()).append(_Held(sandbox, key))

    async def tidy(self) -> None:
        """Release sandboxes beyond their key's target; resume refilling."""
        now = time.monotonic()
        surplus: list[str] = []
        for key, queue in self._ready.items():
            while len(queue) > self.target(key, now):
                surplus.append(queue.popleft().sandbox.sandbox_id)  # the longest unclaimed
        for sandbox_id in surplus:
            await self._release_logged(sandbox_id)
        if self._wanted() is not None:
            self.refill()

    async def _release_logged(self, sandbox_id: str) -> None:
        """Release one the pool no longer holds; a failure is the operator's to see (the
        node's dead check tries the release again: ``Orchestrator.release_abandoned``)."""
        try:
            await self.release(sandbox_id)
        except Exception:
            log.exception("warm pool: releasing %s failed", sandbox_id)

    async def close(self) -> None:
        """Stop filling and release every pooled sandbox (nobody else owns them)."""
        self._closed = True
        if self._refill_timer is not None:
            self._refill_timer.cancel()
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._filling
        ids = [h.sandbox.sandbox_id for q in self._ready.values() for h in q]
        self._ready.clear()
        for sandbox_id in ids:
            await self._release_logged(sandbox_id)

    async def wait_full(self, timeout_s: float) -> None:
        """Until every key is at its target or the filler gave up (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._wanted() is None or self._filling is None or self._filling.done():
                if self._wanted() is None:
                    return
                self.refill()
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the warm pool did not fill within {timeout_s:.0f}s")
