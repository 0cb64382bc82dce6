"""The warm pool's logic on the fake runtime (real loopback envds, real handshakes): claims,
hand-over, refill, sizing, death and restarts. ``test_pool_gvisor.py`` runs it for real."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from emberbox._proto.node import node_pb2 as pb
from emberbox.host import cgroups
from emberbox.node import orchestrator
from emberbox.node import pool as pools
from emberbox.node.client import EmbeddedNode
from emberbox.node.offload import OffloadSettings, OffloadUnavailable
from emberbox.node.orchestrator import Orchestrator
from emberbox.node.pool import DEMAND_WINDOW_S, PoolKey, PoolSettings
from emberbox.runtimes.base import (
    NetworkPolicy,
    RuntimeError_,
    RuntimeSandbox,
    SandboxSpec,
    SnapshotRef,
)
from emberbox.vocabulary import new_sandbox_id

from .fake_runtime import FakeRuntime


def _spec(memory_mb: int = 128, **envs: str) -> pb.SandboxSpec:
    return pb.SandboxSpec(template_id="base", cpu_count=1, memory_mb=memory_mb, disk_mb=64,
                          env_vars=envs, access_token="tok", allow_internet=True)  # fmt: skip


async def _create(node: EmbeddedNode, spec: pb.SandboxSpec) -> tuple[pb.Sandbox, bool]:
    """Create as the control plane does: a claim hands a pooled sandbox over, else a create
    with a fresh id. (sandbox, came from the pool)"""
    claimed = await node.claim(spec)
    if claimed.HasField("sandbox"):
        return claimed.sandbox, True
    spec.sandbox_id = new_sandbox_id()
    return await node.create(spec), False


def _pooled(runtime: FakeRuntime, node: EmbeddedNode) -> set[str]:
    """The sandboxes the pool holds ready."""
    return {i for i in runtime.sandboxes if node.orchestrator.pool.holds(i)}


def _node(tmp_path: Path, runtime: FakeRuntime, **pool: Any) -> EmbeddedNode:
    """``offload``: the offload mode (idle sandboxes are offloaded only by hand)."""
    offload = OffloadSettings(mode=pool.pop("offload", "auto"), idle_s=0)
    settings = PoolSettings(size=int(pool.pop("size", 2)), **pool)
    return EmbeddedNode(runtime, tmp_path, pool=settings, offload=offload, dead_check_every_s=0)


@contextlib.asynccontextmanager
async def _filled(
    tmp_path: Path, runtime: FakeRuntime, **pool: Any
) -> AsyncIterator[tuple[EmbeddedNode, pb.Sandbox]]:
    """A started node whose pool learned the template from one create (returned) and filled
    up; closed afterwards."""
    node = _node(tmp_path, runtime, **pool)
    await node.start()
    try:
        first, _ = await _create(node, _spec())
        await node.orchestrator.pool.wait_full(10)
        yield node, first
    finally:
        await node.close()


async def test_a_claimed_sandbox_was_started_and_initialised_ahead(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    node = _node(tmp_path, runtime)
    await node.start()
    try:
        first, pooled = await _create(node, _spec())
        assert not pooled, "an empty pool hands out nothing; the create starts its own"
        await node.orchestrator.pool.wait_full(10)
        (status,) = (await node.info()).pools
        assert (status.template_id, status.memory_mb, status.ready, status.target) == (
            "base", 128, 2, 2,
        )  # fmt: skip
        waiting = set(runtime.sandboxes) - {first.sandbox_id}
        assert len(waiting) == 2
        # Each was given its identity as it was pooled: its id, a token of its own.
        tokens = set()
        for i in waiting:
            (init,) = runtime.envds[i].inits
            assert init["envVars"] == dict(runtime.sandboxes[i].defaults.env)  # the template's
            tokens.add(init["accessToken"])
        assert len(tokens) == 2 and "tok" not in tokens
        assert [s.sandbox_id for s in (await node.list()).sandboxes] == [first.sandbox_id]

        claim = await node.claim(_spec())  # handed over in the same call
        second = claim.sandbox
        assert second.sandbox_id in waiting and claim.access_token in tokens
        assert second.status == pb.SANDBOX_STATUS_RUNNING and second.envd_url
        assert len(runtime.envds[second.sandbox_id].inits) == 1, "handed over with no /init"
        assert runtime.envds[second.sandbox_id].token == claim.access_token

        third, pooled = await _create(node, _spec(FOO="bar"))  # env vars of its own
        assert pooled and third.sandbox_id in waiting
        envd = runtime.envds[third.sandbox_id]
        assert len(envd.inits) == 2, "the claim's /init proved the pooled token (else 401)"
        defaults = runtime.sandboxes[third.sandbox_id].defaults.env
        assert envd.inits[-1]["envVars"] == {**defaults, "FOO": "bar"}
        listed = {s.sandbox_id for s in (await node.list()).sandboxes}
        assert listed == {first.sandbox_id, second.sandbox_id, third.sandbox_id}
        await node.orchestrator.pool.wait_full(10)  # refilled
        assert len(runtime.sandboxes) == 5
    finally:
        await node.close()
    assert set(runtime.sandboxes) == {first.sandbox_id, second.sandbox_id, third.sandbox_id}


async def test_a_pooled_sandbox_waits_frozen_and_only_its_claim_thaws_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen once it has waited ``POOLED_FREEZE_AFTER_S``; a claim thaws it before its
    ``/init`` (a frozen envd answers nothing); one claimed before its freeze is never frozen."""
    monkeypatch.setattr(orchestrator, "POOLED_FREEZE_AFTER_S", 0.05)
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime) as (node, _):
        pooled = _pooled(runtime, node)
        for _ in range(100):
            if runtime.frozen == pooled:
                break
            await asyncio.sleep(0.02)
        assert runtime.frozen == pooled
        sandbox, from_pool = await _create(node, _spec(FOO="bar"))  # costs an /init
        assert from_pool and sandbox.sandbox_id not in runtime.frozen
        assert runtime.envds[sandbox.sandbox_id].inits[-1]["envVars"] == {"FOO": "bar"}

        monkeypatch.setattr(orchestrator, "POOLED_FREEZE_AFTER_S", 60.0)  # the refill's is due
        await node.orchestrator.pool.wait_full(10)
        (fresh,) = _pooled(runtime, node) - runtime.frozen
        taken = [await _create(node, _spec()) for _ in range(2)]
        assert all(from_pool for _, from_pool in taken)
        claimed = {s.sandbox_id for s, _ in taken}
        assert fresh in claimed
        # Its freeze, once due, finds it claimed and leaves it alone.
        monkeypatch.setattr(orchestrator, "POOLED_FREEZE_AFTER_S", 0.0)
        await node.orchestrator._freeze_pooled(fresh)
        assert not claimed & runtime.frozen, "a claimed sandbox was frozen after its claim"
    assert runtime.frozen == set()


async def test_pooled_sandboxes_behind_the_newest_are_offloaded_and_claims_take_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once frozen, every pooled sandbox but the newest of its key has its memory offloaded,
    once; a claim takes the newest (never offloaded), and one of an offloaded sandbox waits
    for an offload under way, so it never thaws a sandbox whose limit is lowered."""
    monkeypatch.setattr(orchestrator, "POOLED_FREEZE_AFTER_S", 0.0)
    monkeypatch.setattr(cgroups, "swap_in_ram", lambda: True)  # what ``auto`` asks the host
    monkeypatch.setattr(cgroups, "swap_limited", lambda: True)
    monkeypatch.setattr(cgroups, "reclaims", lambda: True)
    runtime = FakeRuntime()
    runtime.offload_s = 0.2
    async with _filled(tmp_path, runtime, size=3) as (node, _):
        order = [h.sandbox.sandbox_id for q in node.orchestrator.pool._ready.values() for h in q]
        for _ in range(100):
            if len(runtime.offloaded) == 2:
                break
            await asyncio.sleep(0.02)
        assert runtime.offloaded == order[:2], "only those behind the newest, oldest first"
        newest, _ = await _create(node, _spec())
        assert newest.sandbox_id == order[2]
        # Claims of offloaded sandboxes work; nothing is offloaded twice.
        taken = [await _create(node, _spec()) for _ in range(2)]
        assert [s.sandbox_id for s, _ in taken] == [order[1], order[0]]
        assert sorted(runtime.offloaded) == sorted(order[:2])
        assert max(runtime.offload_steps.values()) <= 3, "an offload ran twice"

        # A claim arriving while an offload is under way waits for it (the fake asserts that).
        monkeypatch.setattr(orchestrator, "POOLED_FREEZE_AFTER_S", 60.0)
        await node.orchestrator.pool.wait_full(10)
        (queue,) = node.orchestrator.pool._ready.values()
        victim = queue[0].sandbox.sandbox_id  # the oldest: behind the newest
        await runtime.freeze(victim)
        behind = node.orchestrator.pool.waiting_behind(victim)
        offloading = asyncio.create_task(node.orchestrator.offloader.behind(behind))
        for _ in range(100):
            if victim in runtime.offloading:
                break
            await asyncio.sleep(0.005)
        assert victim in runtime.offloading
        claims = [await _create(node, _spec()) for _ in range(3)]
        assert victim in {s.sandbox_id for s, _ in claims}
        await offloading
        assert runtime.bad_thaws == 0, "a claim thawed a sandbox in the middle of a step"


async def test_a_pooled_sandbox_whose_offload_failed_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed step may have left its limit lowered: the sandbox is never handed out."""
    monkeypatch.setattr(orchestrator, "POOLED_FREEZE_AFTER_S", 0.0)
    monkeypatch.setattr(cgroups, "swap_in_ram", lambda: True)
    monkeypatch.setattr(cgroups, "swap_limited", lambda: True)
    runtime = FakeRuntime()
    runtime.offload_error = OSError("EPERM")
    async with _filled(tmp_path, runtime, size=2) as (node, _):
        (queue,) = node.orchestrator.pool._ready.values()
        older = queue[0].sandbox.sandbox_id
        for _ in range(100):
            if older in node.orchestrator.ended:
                break
            await asyncio.sleep(0.02)
        assert node.orchestrator.ended[older] == "offload failed"
        assert runtime.teardowns[older] == 1 and not node.orchestrator.pool.holds(older)


async def test_no_offload_when_the_setting_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orchestrator, "POOLED_FREEZE_AFTER_S", 0.0)
    monkeypatch.setattr(cgroups, "swap_in_ram", lambda: True)
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, size=3, offload="off") as _:
        for _ in range(20):
            await asyncio.sleep(0.02)
        assert len(runtime.frozen) == 3 and runtime.offloaded == []


async def test_offload_on_is_refused_at_start_on_a_host_that_cannot_offload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``on`` where no sandbox could be offloaded stops the node before it holds anything,
    rather than quietly keeping every idle sandbox resident."""
    monkeypatch.setattr(cgroups, "swap_limited", lambda: True)
    monkeypatch.setattr(cgroups, "swap_total", lambda: 0)
    with pytest.raises(OffloadUnavailable, match="no swap"):
        await _node(tmp_path, FakeRuntime(), offload="on").start()
    monkeypatch.setattr(cgroups, "swap_total", lambda: 1 << 30)
    monkeypatch.setattr(cgroups, "swap_limited", lambda: False)
    with pytest.raises(OffloadUnavailable, match="does not account swap"):
        await _node(tmp_path, FakeRuntime(), offload="on").start()
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, offload="auto") as (node, _):  # ``auto`` adapts
        assert not node.orchestrator.offloader.settings.active()
    monkeypatch.setattr(cgroups, "swap_limited", lambda: True)
    async with _filled(tmp_path, runtime, offload="on") as (node, _):
        assert node.orchestrator.offloader.settings.active()


async def test_a_claim_cancelled_while_it_waits_releases_the_sandbox_it_took(
    tmp_path: Path,
) -> None:
    """A claim waits for the pooled sandbox's lock (a freeze may hold it); cancelled there,
    the sandbox it took out of the pool is nobody's: it is released, not left running."""
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, size=1) as (node, _):
        (pooled,) = _pooled(runtime, node)
        async with node.orchestrator._locks.hold(pooled):  # as a freeze in progress does
            claim = asyncio.create_task(node.claim(_spec()))
            await asyncio.sleep(0.1)
            claim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await claim
        for _ in range(100):
            if pooled not in runtime.sandboxes:
                break
            await asyncio.sleep(0.02)
        assert pooled not in runtime.sandboxes, "the sandbox a cancelled claim took leaked"


async def test_a_claim_keeps_the_pooled_token_whatever_the_spec_names(tmp_path: Path) -> None:
    """The token a claim answers is the one the envd holds (the spec's ``tok`` is not read),
    with env vars of its own too: the control plane keeps it and nobody else has seen it."""
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, size=2) as (node, _):
        for spec in (_spec(), _spec(FOO="bar")):
            claim = await node.claim(spec)
            envd = runtime.envds[claim.sandbox.sandbox_id]
            assert claim.access_token not in ("", "tok") and envd.token == claim.access_token
            assert all(i["accessToken"] == claim.access_token for i in envd.inits)


async def test_claims_never_hand_one_sandbox_out_twice(tmp_path: Path) -> None:
    runtime = FakeRuntime(create_delay_s=0.02)
    async with _filled(tmp_path, runtime, size=4) as (node, _):
        results = await asyncio.gather(*(_create(node, _spec()) for _ in range(10)))
        ids = [sandbox.sandbox_id for sandbox, _ in results]
        assert len(set(ids)) == 10
        assert sum(pooled for _, pooled in results) == 4
        assert all(len(runtime.envds[i].inits) == 1 for i in ids)  # pooled: at pooling


async def test_a_shrunk_target_releases_the_surplus(tmp_path: Path) -> None:
    """``auto``: once the demand that sized a key is older than the window, tidying releases
    what the pool holds for it."""
    runtime = FakeRuntime()
    node = EmbeddedNode(runtime, tmp_path, pool=PoolSettings(size=None, max_per_key=2),
                        dead_check_every_s=0)  # fmt: skip
    await node.start()
    try:
        kept = [(await _create(node, _spec()))[0].sandbox_id for _ in range(2)]
        pool = node.orchestrator.pool
        await pool.wait_full(10)
        surplus = _pooled(runtime, node)
        assert len(surplus) == 2, "two creates asked: two kept ready"
        for key, asked in pool._demand.items():  # the window passes
            pool._demand[key] = collections.deque(t - DEMAND_WINDOW_S - 1 for t in asked)
        await pool.tidy()
        assert all(runtime.teardowns[i] == 1 for i in surplus)
        assert set(runtime.sandboxes) == set(kept) and not _pooled(runtime, node)
    finally:
        await node.close()


async def test_specs_the_pool_cannot_serve_are_never_claimed(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime) as (node, _):
        assert not (await node.claim(_spec(memory_mb=256))).HasField("sandbox")  # its own key
        closed = SandboxSpec("x", "base", 1, 128, 64, network=NetworkPolicy(allow_internet=False))
        assert PoolKey.of(closed) is None
        restored = SandboxSpec("x", "base", 1, 128, 64, snapshot=SnapshotRef("s", "fake", "/", "b"))
        assert PoolKey.of(restored) is None
        with_volume = _spec()
        with_volume.volume_mounts.add(volume_id="v1", path="/data")  # a pooled one has none
        assert not (await node.claim(with_volume)).HasField("sandbox")
        assert len(_pooled(runtime, node)) == 2, "nothing was taken"


async def test_a_pooled_sandbox_that_died_is_never_handed_out(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, size=1) as (node, first):
        (doomed,) = set(runtime.sandboxes) - {first.sandbox_id}
        runtime.die(doomed)
        assert await node.orchestrator.check_dead() == [doomed]
        assert not (await node.claim(_spec())).HasField("sandbox")


async def test_a_pooled_sandbox_that_died_unnoticed_is_released_at_its_claim(
    tmp_path: Path,
) -> None:
    """It died before any dead check: the claim, which needs no /init, still looks (a
    cost-free look), releases it and answers empty, so the caller starts one of its own."""
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, size=1) as (node, _):
        (doomed,) = _pooled(runtime, node)
        runtime.die(doomed)
        assert not (await node.claim(_spec())).HasField("sandbox"), "a dead one was handed out"
        assert runtime.teardowns[doomed] == 1 and doomed not in runtime.sandboxes
        created, pooled = await _create(node, _spec())
        assert not pooled and await runtime.alive(created.sandbox_id)


async def test_a_claim_passes_over_a_dead_pooled_sandbox_to_a_live_one(tmp_path: Path) -> None:
    """The first ready sandbox died unnoticed: the claim releases it and hands over the next
    one instead of sending the create to a restore."""
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, size=2) as (node, _):
        (ready,) = node.orchestrator.pool._ready.values()
        live, doomed = (held.sandbox.sandbox_id for held in ready)  # claims take the newest
        runtime.die(doomed)
        claim = await node.claim(_spec())
        assert claim.sandbox.sandbox_id == live
        assert runtime.teardowns[doomed] == 1 and doomed not in runtime.sandboxes
        (status,) = (await node.info()).pools
        assert status.target == 2, "one create asked: a second try is not demand"


class _SlowTeardowns(FakeRuntime):
    """Its teardowns wait for ``torn_down``."""

    def __init__(self) -> None:
        super().__init__()
        self.torn_down = asyncio.Event()
        self.tearing_down: set[str] = set()

    async def kill(self, sandbox_id: str) -> bool:
        self.tearing_down.add(sandbox_id)
        await self.torn_down.wait()
        return await super().kill(sandbox_id)


async def test_sandboxes_pooled_before_their_template_was_rebuilt_are_never_handed_out(
    tmp_path: Path,
) -> None:
    """A template rebuilt under its name (``emberbox template build NAME --local``, a built-in
    one's new image) or deleted: what was pooled ahead holds the old build's files. They are
    released in the background: the create that found them does not wait for it."""
    runtime = _SlowTeardowns()
    runtime.versions["base"] = "v1"
    async with _filled(tmp_path, runtime) as (node, _):
        old = _pooled(runtime, node)
        assert len(old) == 2
        runtime.versions["base"] = "v2"
        sandbox, pooled = await asyncio.wait_for(_create(node, _spec()), 10)  # (no teardowns)
        assert not pooled and sandbox.sandbox_id not in old
        assert old <= runtime.tearing_down and not _pooled(runtime, node)
        runtime.torn_down.set()
        while old & set(runtime.sandboxes):  # noqa: ASYNC110 - the fake's own record
            await asyncio.sleep(0.01)
        await node.orchestrator.pool.wait_full(10)
        _, pooled = await _create(node, _spec())
        assert pooled  # pooled again, from the new build


async def test_a_hung_envd_fails_its_claim_within_the_claim_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim's /init runs under the control plane's admission lock: a pooled envd that does
    not answer is released after CLAIM_INIT_TIMEOUT_S, not after a boot timeout."""
    monkeypatch.setattr(orchestrator, "CLAIM_INIT_TIMEOUT_S", 0.3)
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, size=1) as (node, _):
        (hung,) = _pooled(runtime, node)
        runtime.envds[hung].init_delay_s = 30
        started = asyncio.get_running_loop().time()
        claim = await node.claim(_spec(FOO="bar"))
        assert asyncio.get_running_loop().time() - started < 5, "waited for the boot timeout"
        assert claim.sandbox.sandbox_id != hung  # empty, or one the pool started meanwhile
        assert runtime.teardowns[hung] == 1


async def test_a_restarted_node_removes_what_its_predecessor_pooled(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    before = _node(tmp_path, runtime)
    await before.start()
    kept, _ = await _create(before, _spec())
    await before.orchestrator.pool.wait_full(10)
    pooled = set(runtime.sandboxes) - {kept.sandbox_id}
    # The process dies (no close): a new one over the same records adopts only real sandboxes.
    after = Orchestrator(runtime, tmp_path, dead_check_every_s=0)
    report = await after.start()
    try:
        assert report.adopted == [kept.sandbox_id]
        assert set(report.removed) == pooled and set(runtime.sandboxes) == {kept.sandbox_id}
    finally:
        await after.close()


async def test_auto_sizing_follows_recent_demand() -> None:
    async def never(_: object) -> None:
        raise AssertionError("not started in this test")

    from emberbox.node.pool import WarmPool

    pool = WarmPool(PoolSettings(size=None, max_per_key=3), never, never)  # type: ignore[arg-type]
    pool.refill = lambda: None  # type: ignore[method-assign]
    key = PoolKey("base", 1, 128, 64)
    assert pool.target(key) == 0
    for n in range(1, 6):
        pool.claim(key.spec("x"))
        assert pool.target(key) == min(n, 3)
    assert pool.target(PoolKey("other", 1, 128, 64)) == 0
    later = 10_000.0 + pool._demand[key][-1]
    assert pool.target(key, now=later) == 0, "demand older than the window no longer counts"


async def test_a_template_whose_starts_fail_rests_and_the_others_are_pooled() -> None:
    """A broken (or deleted) template asked for most: the filler went back to it for ever,
    and no other template was pooled again."""
    from emberbox.node.pool import WarmPool

    broken, fine = PoolKey("broken", 1, 128, 64), PoolKey("base", 1, 128, 64)
    starts: collections.Counter[str] = collections.Counter()

    async def start(key: PoolKey) -> RuntimeSandbox:
        starts[key.template_id] += 1
        if key == broken:
            raise RuntimeError("no such template")
        return RuntimeSandbox(new_sandbox_id(), key.template_id, "127.0.0.1")

    async def release(_: str) -> None:
        pass

    pool = WarmPool(PoolSettings(size=None), start, release, free_mb=lambda: 1 << 20)
    for _ in range(4):
        pool.claim(broken.spec("x"))
    pool.claim(fine.spec("y"))
    pool.refill()
    await pool.wait_full(10)
    assert starts == {"broken": pools.FAILED_STARTS, "base": 1}
    assert [(s.key.template_id, s.ready) for s in pool.status()] == [("base", 1), ("broken", 0)]
    pool._resting[broken] = 0.0  # its rest over: tried again, and resting longer
    pool.refill()
    await pool.wait_full(10)
    assert starts["broken"] == pools.FAILED_STARTS + 1
    assert pool._resting[broken] > time.monotonic() + pools.RESTING_S * 1.5
    pool._failures[broken], pool._resting[broken] = 5000, 0.0  # a week of failing, 10 min apart
    pool.refill()
    await pool.wait_full(10)  # (2 ** 5000 s overflowed a float: the filler died)
    assert starts["broken"] == pools.FAILED_STARTS + 2
    assert pool._resting[broken] > time.monotonic() + pools.RESTING_MAX_S - 60
    await pool.close()


class _BootFails(FakeRuntime):
    """Its machines start, then their boot fails, and their teardown fails (a busy mount:
    ``broken``) until the test clears it."""

    async def create(self, spec: SandboxSpec) -> RuntimeSandbox:
        sandbox = await super().create(spec)
        if spec.template_id == "fails":
            self.broken.add(spec.sandbox_id)
            raise RuntimeError_("boot failed")
        return sandbox


async def test_what_a_failed_teardown_left_is_released_by_a_later_dead_check(
    tmp_path: Path,
) -> None:
    """A create (or a pooled start) whose boot failed, and whose teardown failed too: its
    record stayed creating (or pooled), which no dead check, listing or claim looks at, and
    its resources stayed until the node restarted. The caller is told the boot's error."""
    runtime = _BootFails()
    node = _node(tmp_path, runtime, size=1)
    await node.start()
    try:
        spec = _spec()
        spec.template_id, spec.sandbox_id = "fails", new_sandbox_id()
        with pytest.raises(Exception, match="boot failed"):
            await node.create(spec)
        assert not (await node.claim(_spec())).HasField("sandbox")  # ("base" is asked for)
        pool = node.orchestrator.pool
        pool.claim(SandboxSpec("x", "fails", 1, 128, 64))  # (and "fails" is)
        await pool.wait_full(10)
        left = set(runtime.broken)
        assert spec.sandbox_id in left and len(left) == 1 + pools.FAILED_STARTS
        assert left <= set(runtime.sandboxes)
        assert await node.orchestrator.release_abandoned() == []  # (failing still)
        runtime.broken.clear()  # the host lets them go now
        assert set(await node.orchestrator.release_abandoned()) == left
        assert not left & set(runtime.sandboxes)
        assert (await node.claim(_spec())).HasField("sandbox")  # the pool works on
    finally:
        await node.close()


async def test_a_fixed_pool_keeps_no_record_per_create_and_forgets_keys_unused_for_a_day() -> None:
    """Its size does not depend on how often a key was asked for: a node running for months
    must not keep a timestamp per create. A key unused for a day goes, or a template's older
    builds would hold the whole pool for ever."""
    from emberbox.node.pool import WarmPool

    async def never(_: object) -> None:
        raise AssertionError("not started in this test")

    pool = WarmPool(PoolSettings(size=2), never, never)  # type: ignore[arg-type]
    pool.refill = lambda: None  # type: ignore[method-assign]
    key = PoolKey("base", 1, 128, 64)
    for _ in range(1000):
        pool.claim(key.spec("x"))
        assert pool.target(key) == 2
    assert len(pool._demand[key]) == 1
    # A day without a create (a template's older build, each its own key): none kept.
    assert pool.target(key, now=pool._demand[key][-1] + pools.FIXED_KEEP_S + 1) == 0


def test_settings_read_from_the_environment() -> None:
    assert PoolSettings.from_env({}).size is None  # auto
    assert PoolSettings.from_env({"EMBERBOX_WARM_POOL": "0"}).enabled is False
    fixed = PoolSettings.from_env({"EMBERBOX_WARM_POOL": "25"})
    assert (fixed.size, fixed.max_total) == (25, 25)
    for bad in ("many", "-1"):
        with pytest.raises(ValueError, match="EMBERBOX_WARM_POOL"):
            PoolSettings.from_env({"EMBERBOX_WARM_POOL": bad})
    settings = PoolSettings.from_env(
        {"EMBERBOX_WARM_POOL_MAX": "7", "EMBERBOX_WARM_POOL_MIN_FREE_MB": "0"}
    )
    assert (settings.max_total, settings.min_free_mb) == (7, 0)
    for name in ("EMBERBOX_WARM_POOL_MAX", "EMBERBOX_WARM_POOL_MIN_FREE_MB"):
        for bad in ("lots", "1G", "-3"):  # (-3 turned the pool off, silently)
            with pytest.raises(ValueError, match=f"{name}='{bad}'"):
                PoolSettings.from_env({name: bad})
