"""The warm pool's logic on the fake runtime (real loopback envds, real handshakes): claims,
hand-over, refill, expiry, sizing, death and restarts. ``test_pool_gvisor.py`` runs it for real."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emberbox._proto.node import node_pb2 as pb
from emberbox.node.client import EmbeddedNode, NodeBadRequest
from emberbox.node.orchestrator import Orchestrator
from emberbox.node.pool import PoolKey, PoolSettings
from emberbox.runtimes.base import NetworkPolicy, SandboxSpec, SnapshotRef
from emberbox.vocabulary import new_sandbox_id

from .fake_runtime import FakeRuntime


def _spec(memory_mb: int = 128, **envs: str) -> pb.SandboxSpec:
    return pb.SandboxSpec(template_id="base", cpu_count=1, memory_mb=memory_mb, disk_mb=64,
                          env_vars=envs, access_token="tok", allow_internet=True)  # fmt: skip


async def _create(node: EmbeddedNode, spec: pb.SandboxSpec) -> tuple[pb.Sandbox, bool]:
    """Create as the control plane does: claim (and take the claimed envd's token), else a
    fresh id. (sandbox, came from the pool)"""
    claimed = await node.claim(spec)
    spec.sandbox_id = claimed.sandbox_id or new_sandbox_id()
    if claimed.access_token:
        spec.access_token = claimed.access_token
    return await node.create(spec), bool(claimed.sandbox_id)


def _node(tmp_path: Path, runtime: FakeRuntime, **pool: float) -> EmbeddedNode:
    settings = PoolSettings(size=int(pool.pop("size", 2)), **pool)  # type: ignore[arg-type]
    return EmbeddedNode(runtime, tmp_path, pool=settings, dead_check_every_s=0)


@contextlib.asynccontextmanager
async def _filled(
    tmp_path: Path, runtime: FakeRuntime, **pool: float
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

        claim = await node.claim(_spec())
        assert claim.sandbox_id in waiting and claim.access_token in tokens
        spec = _spec()  # as the control plane does: it keeps the claimed envd's token
        spec.sandbox_id, spec.access_token = claim.sandbox_id, claim.access_token
        second = await node.create(spec)
        assert second.sandbox_id == claim.sandbox_id
        assert len(runtime.envds[second.sandbox_id].inits) == 1, "handed over with no /init"

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


async def test_a_claim_with_another_token_sets_it(tmp_path: Path) -> None:
    """A create that does not take the pooled token (its own, ``tok``) gets it by /init."""
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, size=1) as (node, _):
        spec = _spec()
        spec.sandbox_id = (await node.claim(spec)).sandbox_id
        assert spec.sandbox_id
        await node.create(spec)
        envd = runtime.envds[spec.sandbox_id]
        assert [i["accessToken"] for i in envd.inits][1:] == ["tok"] and envd.token == "tok"


async def test_claims_never_hand_one_sandbox_out_twice(tmp_path: Path) -> None:
    runtime = FakeRuntime(create_delay_s=0.02)
    async with _filled(tmp_path, runtime, size=4) as (node, _):
        results = await asyncio.gather(*(_create(node, _spec()) for _ in range(10)))
        ids = [sandbox.sandbox_id for sandbox, _ in results]
        assert len(set(ids)) == 10
        assert sum(pooled for _, pooled in results) == 4
        assert all(len(runtime.envds[i].inits) == 1 for i in ids)  # pooled: at pooling


async def test_unused_claims_and_a_shrunk_target_release_their_sandboxes(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, hold_s=0.05) as (node, _):
        pool = node.orchestrator.pool
        claimed = (await node.claim(_spec())).sandbox_id
        assert claimed
        await asyncio.sleep(0.1)
        await pool.tidy()
        assert runtime.teardowns[claimed] == 1 and claimed not in runtime.sandboxes
        spec = _spec()
        spec.sandbox_id = claimed  # a create that comes too late starts a sandbox of its own
        late = await node.create(spec)
        assert late.sandbox_id == claimed and len(runtime.envds[claimed].inits) == 1


async def test_specs_the_pool_cannot_serve_are_never_claimed(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime) as (node, _):
        assert (await node.claim(_spec(memory_mb=256))).sandbox_id == ""  # its own key
        closed = SandboxSpec("x", "base", 1, 128, 64, network=NetworkPolicy(allow_internet=False))
        assert PoolKey.of(closed) is None
        restored = SandboxSpec("x", "base", 1, 128, 64, snapshot=SnapshotRef("s", "fake", "/", "b"))
        assert PoolKey.of(restored) is None
        claimed = (await node.claim(_spec())).sandbox_id
        wrong = _spec(memory_mb=256)
        wrong.sandbox_id = claimed
        with pytest.raises(NodeBadRequest, match="claimed for another"):
            await node.create(wrong)


async def test_a_pooled_sandbox_that_died_is_never_handed_out(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, size=1) as (node, first):
        (doomed,) = set(runtime.sandboxes) - {first.sandbox_id}
        runtime.die(doomed)
        assert await node.orchestrator.check_dead() == [doomed]
        claimed = (await node.claim(_spec())).sandbox_id
        assert claimed != doomed


async def test_a_pooled_sandbox_that_died_unnoticed_is_replaced_at_its_claim(
    tmp_path: Path,
) -> None:
    """It died after its claim, before any dead check: the create, which needs no /init,
    still looks (a cost-free look) and starts a sandbox of its own under the id instead."""
    runtime = FakeRuntime()
    async with _filled(tmp_path, runtime, size=1) as (node, _):
        claim = await node.claim(_spec())
        runtime.die(claim.sandbox_id)
        spec = _spec()
        spec.sandbox_id, spec.access_token = claim.sandbox_id, claim.access_token
        created = await node.create(spec)
        assert created.sandbox_id == claim.sandbox_id
        assert await runtime.alive(claim.sandbox_id), "a dead sandbox was handed out"
        assert runtime.teardowns[claim.sandbox_id] == 1  # the dead one, released
        (init,) = runtime.envds[claim.sandbox_id].inits  # the new one's own /init
        assert init["accessToken"] == claim.access_token


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


def test_settings_read_from_the_environment() -> None:
    assert PoolSettings.from_env({}).size is None  # auto
    assert PoolSettings.from_env({"EMBERBOX_WARM_POOL": "0"}).enabled is False
    fixed = PoolSettings.from_env({"EMBERBOX_WARM_POOL": "25"})
    assert (fixed.size, fixed.max_total) == (25, 25)
    for bad in ("many", "-1"):
        with pytest.raises(ValueError, match="EMBERBOX_WARM_POOL"):
            PoolSettings.from_env({"EMBERBOX_WARM_POOL": bad})
