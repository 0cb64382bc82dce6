"""Offloading idle sandboxes' memory (``node/offload.py``) on the fake runtime, whose CPU
counters and resident memory the tests set: which sandboxes go, when, how often, and that
nothing else waits on it. ``test_pool_gvisor.py`` offloads real ones."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest

from emberbox._proto.node import node_pb2 as pb
from emberbox.host import cgroups
from emberbox.node import offload
from emberbox.node.client import EmbeddedNode
from emberbox.node.offload import (
    IDLE_CPU_SHARE,
    MAX_WINDOW_S,
    REGROWN_BYTES,
    RETRIES,
    Offloader,
    OffloadSettings,
)
from emberbox.vocabulary import new_sandbox_id

from .fake_runtime import FakeRuntime

IDLE_S = 10.0


@pytest.fixture(autouse=True)
def _swap_in_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``auto`` asks of the host: its swap is compressed RAM, accounted per cgroup."""
    monkeypatch.setattr(cgroups, "swap_in_ram", lambda: True)
    monkeypatch.setattr(cgroups, "swap_limited", lambda: True)
    monkeypatch.setattr(cgroups, "reclaims", lambda: True)


@contextlib.asynccontextmanager
async def _node(
    tmp_path: Path,
    runtime: FakeRuntime,
    idle_s: float = IDLE_S,
    mode: Literal["auto", "on", "off"] = "auto",
) -> AsyncIterator[EmbeddedNode]:
    runtime.cpu_ns = runtime.cpu_ns if runtime.cpu_ns is not None else {}
    settings = OffloadSettings(mode, idle_s)
    node = EmbeddedNode(runtime, tmp_path, offload=settings, dead_check_every_s=0)
    await node.start()
    try:
        yield node
    finally:
        await node.close()


async def _running(node: EmbeddedNode) -> str:
    spec = pb.SandboxSpec(template_id="base", cpu_count=1, memory_mb=128, disk_mb=64,
                          access_token="tok", sandbox_id=new_sandbox_id())  # fmt: skip
    return (await node.create(spec)).sandbox_id


@contextlib.asynccontextmanager
async def _one_watched(
    tmp_path: Path, runtime: FakeRuntime
) -> AsyncIterator[tuple[EmbeddedNode, Offloader, str]]:
    """A node holding one running sandbox, whose offloader sweeps only when the test says,
    at the times it gives (its own sweeper never gets there)."""
    async with _node(tmp_path, runtime, idle_s=1e6) as node:
        offloader = node.orchestrator.offloader
        sandbox_id = await _running(node)
        offloader.settings = OffloadSettings("auto", IDLE_S)
        yield node, offloader, sandbox_id


async def _seen_idle_until_ripe(offloader: Offloader) -> None:
    """Sweeps at 0 and IDLE_S / 2 (nothing used the CPU): a sweep at IDLE_S offloads."""
    for at in (0.0, IDLE_S / 2):
        await offloader.sweep(now=at)


async def test_a_running_sandbox_idle_long_enough_is_offloaded_and_again_only_once_it_regrew(
    tmp_path: Path,
) -> None:
    runtime = FakeRuntime()
    async with _node(tmp_path, runtime, idle_s=1e6) as node:  # the sweeper never gets there
        offloader = node.orchestrator.offloader
        idle, busy = await _running(node), await _running(node)
        assert await offloader.sweep(now=0.0) == []  # first seen
        assert runtime.cpu_ns is not None
        # Under a tenth of a core for both; ``busy`` then uses half a core.
        runtime.cpu_ns[idle] = int(0.9 * IDLE_CPU_SHARE * 5e9)
        runtime.cpu_ns[busy] = int(0.5 * 5e9)
        assert await offloader.sweep(now=5.0) == []
        offloader.settings = OffloadSettings("auto", IDLE_S)
        assert await offloader.sweep(now=IDLE_S - 0.1) == [], "offloaded before idle_s"
        assert await offloader.sweep(now=IDLE_S + 0.1) == [idle]
        assert runtime.resident[idle] == 4 << 20 and offloader.offloaded(idle)
        assert busy not in runtime.offloaded, "a sandbox using the CPU was offloaded"
        # Idle still: nothing more until its memory regrew by REGROWN_BYTES.
        # (``busy`` went quiet at 5.0: its turn comes now.)
        runtime.resident[idle] += REGROWN_BYTES - 1
        assert await offloader.sweep(now=IDLE_S + 5) == [busy]
        runtime.resident[idle] += 1
        assert await offloader.sweep(now=IDLE_S + 10) == [idle]
        # Used again: idle_s counts from its last busy sweep.
        runtime.cpu_ns[idle] += int(5e9)
        runtime.resident[idle] = 40 << 20
        assert await offloader.sweep(now=IDLE_S + 15) == []
        assert await offloader.sweep(now=2 * IDLE_S + 14) == []
        assert await offloader.sweep(now=2 * IDLE_S + 16) == [idle]
        # A paused sandbox has no activity: never offloaded.
        await node.orchestrator.pause(busy)
        runtime.resident[busy] = 40 << 20
        assert await offloader.sweep(now=2 * IDLE_S + 20) == []
        assert runtime.bad_thaws == 0


async def test_the_node_sweeps_by_itself_and_off_or_zero_offloads_nothing(
    tmp_path: Path,
) -> None:
    runtime = FakeRuntime()
    async with _node(tmp_path, runtime, idle_s=0.1) as node:
        sandbox_id = await _running(node)
        for _ in range(200):
            if node.orchestrator.offloader.offloaded(sandbox_id):
                break
            await asyncio.sleep(0.02)
        assert node.orchestrator.offloader.offloaded(sandbox_id)
        assert runtime.resident[sandbox_id] == 4 << 20
    cases: list[tuple[Literal["auto", "on", "off"], float]] = [("off", 0.1), ("auto", 0.0)]
    for mode, idle_s in cases:
        runtime = FakeRuntime()
        async with _node(tmp_path / mode, runtime, idle_s=idle_s, mode=mode) as node:
            await _running(node)
            assert await node.orchestrator.offloader.sweep(now=0.0) == []
            await asyncio.sleep(0.5)
            assert await node.orchestrator.offloader.sweep(now=1e6) == []
            assert runtime.offloaded == []


async def test_a_pause_during_an_idle_offload_waits_for_one_step_and_ends_it(
    tmp_path: Path,
) -> None:
    runtime = FakeRuntime()
    runtime.offload_s = 0.1
    async with _one_watched(tmp_path, runtime) as (node, offloader, sandbox_id):
        await _seen_idle_until_ripe(offloader)
        sweeping = asyncio.create_task(offloader.sweep(now=IDLE_S))
        for _ in range(400):
            if sandbox_id in runtime.offloading:
                break
            await asyncio.sleep(0.005)
        await node.orchestrator.pause(sandbox_id)
        await sweeping
        assert runtime.bad_thaws == 0, "the pause ran in the middle of a step"
        assert runtime.offload_steps[sandbox_id] == 1, "steps went on after the pause"
        # Paused, it is idle from its pause on: not taken for offloaded by the cut offload.
        assert not offloader.offloaded(sandbox_id)


async def test_a_paused_sandbox_whose_processes_are_kept_is_offloaded_idle_s_after_its_pause(
    tmp_path: Path,
) -> None:
    """What gVisor's kept paused sandboxes get (``runtimes/gvisor/kept.py``): the runtime
    reports their activity, and the sweep offloads them like an idle running one, counting
    from the pause (an idle running sandbox paused just before its offload waits again)."""
    runtime = FakeRuntime()
    runtime.keeps_paused = True
    async with _one_watched(tmp_path, runtime) as (node, offloader, sandbox_id):
        await _seen_idle_until_ripe(offloader)
        await node.orchestrator.pause(sandbox_id)
        assert await offloader.sweep(now=IDLE_S) == []  # first seen since its pause
        assert await offloader.sweep(now=2 * IDLE_S - 0.1) == []
        assert await offloader.sweep(now=2 * IDLE_S + 0.1) == [sandbox_id]
        assert offloader.offloaded(sandbox_id) and runtime.resident[sandbox_id] == 4 << 20
        await node.orchestrator.resume(sandbox_id)
        assert not offloader.offloaded(sandbox_id)  # runs anew


async def test_an_offload_that_ran_out_of_steps_is_tried_again_a_few_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps run out with much still resident (a paused sandbox's 256 MiB on cgroup v1):
    it does not count as offloaded, and the next sweeps go on; one that never gets there
    counts as offloaded after ``RETRIES`` more, and is left alone until it regrows."""
    monkeypatch.setattr(offload, "OFFLOAD_STEPS", 2)  # the fake needs 3 to finish
    runtime = FakeRuntime()
    async with _one_watched(tmp_path, runtime) as (_, offloader, sandbox_id):
        await _seen_idle_until_ripe(offloader)
        assert await offloader.sweep(now=IDLE_S) == [sandbox_id]
        assert not offloader.offloaded(sandbox_id) and runtime.resident[sandbox_id] > 4 << 20
        assert await offloader.sweep(now=IDLE_S + 1) == [sandbox_id]
        assert offloader.offloaded(sandbox_id) and runtime.resident[sandbox_id] == 4 << 20
        assert runtime.offload_steps[sandbox_id] == 3

    async def never_done(sandbox_id: str) -> bool:
        return True  # moved some, more to move, and its resident stays as it was

    runtime = FakeRuntime()
    async with _one_watched(tmp_path / "stuck", runtime) as (_, offloader, sandbox_id):
        monkeypatch.setattr(runtime, "offload", never_done)
        await _seen_idle_until_ripe(offloader)
        for k in range(RETRIES + 1):
            assert await offloader.sweep(now=IDLE_S + k) == [sandbox_id]
        assert offloader.offloaded(sandbox_id)
        assert await offloader.sweep(now=IDLE_S + RETRIES + 1) == []


async def test_a_failed_step_leaves_a_running_sandbox_running_and_alone(
    tmp_path: Path,
) -> None:
    runtime = FakeRuntime()
    async with _one_watched(tmp_path, runtime) as (node, offloader, sandbox_id):
        runtime.offload_error = OSError("EPERM")
        await _seen_idle_until_ripe(offloader)
        assert await offloader.sweep(now=IDLE_S) == []
        assert node.orchestrator._held[sandbox_id].state == "running"
        assert runtime.offloaded == [] and sandbox_id in offloader._failed
        runtime.offload_error = None
        assert await offloader.sweep(now=IDLE_S * 1.5) == [], "retried after a failure"


def test_settings_read_from_the_environment() -> None:
    assert OffloadSettings.from_env({}) == OffloadSettings("auto", 30.0)
    for value in ("on", "off"):
        assert OffloadSettings.from_env({"EMBERBOX_OFFLOAD": value}).mode == value
    assert OffloadSettings.from_env({"EMBERBOX_OFFLOAD_IDLE_S": "2.5"}).idle_s == 2.5
    assert not OffloadSettings(mode="off").active()
    for env in ({"EMBERBOX_OFFLOAD": "yes"}, {"EMBERBOX_OFFLOAD_IDLE_S": "soon"},
                {"EMBERBOX_OFFLOAD_IDLE_S": "-1"}, {"EMBERBOX_OFFLOAD_IDLE_S": "nan"}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(env))):
            OffloadSettings.from_env(env)
    with pytest.raises(ValueError, match="is now EMBERBOX_OFFLOAD"):  # its first name
        OffloadSettings.from_env({"EMBERBOX_WARM_POOL_OFFLOAD": "off"})


async def test_a_resumed_sandbox_counts_as_idle_only_idle_s_after_it_runs_again(
    tmp_path: Path,
) -> None:
    """Idle before its pause is not idle after its resume (nor after a claim or a rollback,
    which start it anew the same way): the next sweep sees it for the first time."""
    runtime = FakeRuntime()
    async with _one_watched(tmp_path, runtime) as (node, offloader, sandbox_id):
        await _seen_idle_until_ripe(offloader)
        assert await offloader.sweep(now=IDLE_S) == [sandbox_id]
        await node.orchestrator.pause(sandbox_id)
        await node.orchestrator.resume(sandbox_id)
        runtime.resident[sandbox_id] = 40 << 20  # all of it back, as after a restore
        assert await offloader.sweep(now=IDLE_S + 1) == [], "offloaded as it resumed"
        assert await offloader.sweep(now=2 * IDLE_S) == [], "offloaded before idle_s"
        assert await offloader.sweep(now=2 * IDLE_S + 2) == [sandbox_id]


async def test_a_long_window_counts_as_busy_and_a_held_lock_is_passed_over(
    tmp_path: Path,
) -> None:
    """CPU time read over a window longer than ``MAX_WINDOW_S`` (a sweep slowed by other
    offloads) could hide a burst: it counts as busy. A sandbox whose lock is held (a pause,
    a claim) is left to the next sweep rather than waited for."""
    runtime = FakeRuntime()
    async with _one_watched(tmp_path, runtime) as (node, offloader, sandbox_id):
        await offloader.sweep(now=0.0)
        assert await offloader.sweep(now=MAX_WINDOW_S + 1) == []
        assert await offloader.sweep(now=MAX_WINDOW_S + 2) == [], "busy_at moved on"
        ripe = MAX_WINDOW_S + 1 + IDLE_S  # idle_s after the long window's busy mark
        async with node.orchestrator._locks.hold(sandbox_id):
            assert await offloader.sweep(now=ripe + 0.5) == []
        assert await offloader.sweep(now=ripe + 1) == [sandbox_id]
