"""The orchestrator ends sandboxes on time, frees dead ones, and survives its own SIGKILL
without leaving anything behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from emberbox.runtimes.base import RuntimeSandbox
from emberbox.runtimes.gvisor import GVisorRuntime
from emberbox.server.orchestrator import Orchestrator, SandboxNotFound
from tests.runtimes.gvisor_support import Inventory, healthy, inventory, run


def _as_runtime_sandbox(sandbox_id: str, address: str) -> RuntimeSandbox:
    return RuntimeSandbox(sandbox_id=sandbox_id, template_id="base", address=address)


async def _wait_gone(orch: Orchestrator, sandbox_id: str, seconds: float) -> None:
    for _ in range(int(seconds * 10)):
        if sandbox_id not in {s.sandbox_id for s in orch.list()}:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sandbox_id} still owned after {seconds}s")


async def test_end_time_is_enforced_and_extendable(runtime: GVisorRuntime, tmp_path: Path):
    before = await inventory(runtime.config)
    orch = Orchestrator(runtime, tmp_path, tick=0.2)
    await orch.start()
    try:
        kept = await orch.create("base", timeout_s=2, allow_internet=False)
        await orch.set_timeout(kept.sandbox_id, 60)
        short = await orch.create("base", timeout_s=3, allow_internet=False)
        short_box = _as_runtime_sandbox(short.sandbox_id, short.address)
        assert (await run(short_box, "echo up")).text == "up\n"
        stats = await orch.stats(kept.sandbox_id)
        assert stats.mem_total == 512 * 2**20
        await _wait_gone(orch, short.sandbox_id, 6)
        assert orch.ended[short.sandbox_id] == "timeout"
        assert (await inventory(runtime.config)).mentions(short.sandbox_id) == []
        assert await healthy(_as_runtime_sandbox(kept.sandbox_id, kept.address))
        with pytest.raises(SandboxNotFound):
            await orch.kill(short.sandbox_id)
    finally:
        await orch.close(kill_all=True)
    assert (await inventory(runtime.config)).leaked_since(before) == {}
    assert list((tmp_path / "sandboxes").glob("*.json")) == []


async def test_sandbox_that_dies_is_cleaned_up(runtime: GVisorRuntime, tmp_path: Path):
    before = await inventory(runtime.config)
    orch = Orchestrator(runtime, tmp_path, tick=0.2, health_every=0.5)
    await orch.start()
    try:
        sandbox = await orch.create("base", timeout_s=300, allow_internet=False)
        await runtime.runsc.delete(sandbox.sandbox_id)  # dies behind the orchestrator's back
        await _wait_gone(orch, sandbox.sandbox_id, 5)
        assert orch.ended[sandbox.sandbox_id] == "exited"
    finally:
        await orch.close(kill_all=True)
    assert (await inventory(runtime.config)).leaked_since(before) == {}


async def _orchestrator(state_dir: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emberbox.server.orchestrator", *args,
        "--state-dir", str(state_dir), "--runtime", "gvisor",
        stdout=asyncio.subprocess.PIPE, env={**os.environ},
    )  # fmt: skip


async def _events(proc: asyncio.subprocess.Process, until: str) -> list[dict[str, object]]:
    assert proc.stdout is not None
    events: list[dict[str, object]] = []
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert line, f"orchestrator exited before {until!r}: {events}"
        events.append(json.loads(line))
        if events[-1]["event"] == until:
            return events


async def test_sigkill_and_restart_leave_no_orphans(runtime: GVisorRuntime, tmp_path: Path):
    baseline: Inventory = await inventory(runtime.config)

    # 1. An orchestrator creates sandboxes and is SIGKILLed in the middle of creating more.
    first = await _orchestrator(tmp_path, "run", "--create", "3", "--timeout", "600",
                                "--no-internet")  # fmt: skip
    created = await _events(first, until="created")
    await asyncio.sleep(0.3)  # the second create is now somewhere inside runtime.create
    first.send_signal(signal.SIGKILL)
    await first.wait()
    survivor = str(created[-1]["sandbox_id"])
    survivor_box = _as_runtime_sandbox(survivor, str(created[-1]["address"]))
    assert await healthy(survivor_box), "sandboxes outlive the orchestrator process"

    # 2. A sandbox dies while no orchestrator runs.
    second = await _orchestrator(tmp_path, "run", "--create", "1", "--timeout", "600",
                                 "--no-internet")  # fmt: skip
    second_events = await _events(second, until="created")
    doomed = str(second_events[-1]["sandbox_id"])
    # Its start() already adopted the survivor and removed the one SIGKILL cut off mid-create.
    assert second_events[0]["adopted"] == [survivor]
    half_created = second_events[0]["removed"]
    assert isinstance(half_created, list) and len(half_created) == 1
    assert survivor not in half_created
    second.send_signal(signal.SIGKILL)
    await second.wait()
    await runtime.runsc.delete(doomed)
    messy = await inventory(runtime.config)
    assert messy.mentions(doomed), "the dead sandbox left resources for recovery to find"

    # 3. The restarted orchestrator adopts the live sandbox and removes everything else.
    recover = await _orchestrator(tmp_path, "recover")
    report = (await _events(recover, until="started"))[-1]
    assert await recover.wait() == 0
    assert report["adopted"] == [survivor]
    removed = report["removed"]
    assert isinstance(removed, list) and doomed in removed
    after_recovery = await inventory(runtime.config)
    assert after_recovery.mentions(doomed) == []
    assert after_recovery.mentions(str(half_created[0])) == []
    assert set(after_recovery.sandbox_dirs) - set(baseline.sandbox_dirs) == {survivor}
    assert await healthy(survivor_box)
    assert (await run(survivor_box, "echo adopted")).text == "adopted\n"

    # 4. Killing what was adopted returns the host to where it started.
    cleanup = await _orchestrator(tmp_path, "kill-all")
    await _events(cleanup, until="killed-all")
    assert await cleanup.wait() == 0
    final = await inventory(runtime.config)
    assert final.leaked_since(baseline) == {}
    assert list((tmp_path / "sandboxes").glob("*.json")) == []
