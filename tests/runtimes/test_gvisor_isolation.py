"""Isolation: memory limit, pids limit (egress: test_gvisor_egress.py). Every "blocked" check
is paired with a check that the same thing works when allowed, so a broken setup cannot pass by
accident."""

from __future__ import annotations

import asyncio

from emberbox.host import cgroups
from emberbox.runtimes.base import SandboxStatus
from emberbox.runtimes.gvisor import GVisorRuntime

from .conftest import SandboxFactory
from .gvisor_support import healthy, run

# Egress policy: test_gvisor_egress.py.


async def test_memory_limit_kills_only_the_offender(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
):
    """The guest's init kills the process with the most memory when the sandbox runs out (the
    host's OOM killer, confined to the sandbox's cgroup, is only a backstop that picks guest
    processes, never the sentry): the hog dies, the sandbox and its neighbours carry on, and
    the runtime reports the OOM kill."""
    offender = await make_sandbox(memory_mb=256)
    bystander = await make_sandbox(memory_mb=256)
    hog = "python3 -c 'b=[]\nwhile True: b.append(bytearray(16<<20))'"
    started = await run(offender, f"nohup {hog} >/dev/null 2>&1 & echo started")
    assert started.text.strip() == "started"
    hog_alive = True
    for _ in range(100):
        await asyncio.sleep(0.2)
        state = await runtime.get(offender.sandbox_id)
        if state.status is SandboxStatus.STOPPED:
            break
        if state.oom_killed:
            probe = "pgrep -f 'b[y]tearray' >/dev/null && echo alive || echo gone"
            check = await run(offender, probe)
            hog_alive = check.text.strip() == "alive"
            if not hog_alive:
                break
    assert state.oom_killed, "no OOM kill in the offender"
    assert state.status is not SandboxStatus.STOPPED, "the whole sandbox died, not the hog"
    assert not hog_alive
    assert (await run(offender, "echo recovered")).text.strip() == "recovered"
    assert await healthy(bystander)
    assert (await run(bystander, "echo alive")).text.strip() == "alive"
    assert (await runtime.get(bystander.sandbox_id)).oom_killed is False


async def test_fork_bomb_is_contained_by_the_pids_limit(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
):
    sandbox = await make_sandbox(pids_limit=64)
    bomb = (
        "python3 - <<'EOF'\n"
        "import os, time\n"
        "children, refused = 0, 0\n"
        "deadline = time.time() + 4\n"
        "while time.time() < deadline:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"
        "        refused += 1; time.sleep(0.01); continue\n"
        "    if pid == 0:\n"
        "        time.sleep(3); os._exit(0)\n"
        "    children += 1\n"
        "print(children, refused)\n"
        "EOF"
    )
    result = await run(sandbox, bomb, timeout=60)
    children, refused = map(int, result.text.split())
    assert refused > 0, "fork never failed: no pids limit inside"
    usage = cgroups.usage(f"{runtime.config.cgroup_base}/{sandbox.sandbox_id}")
    assert usage is not None and usage.pids < 64 * 3 + 128  # host side stays under its cap
    await asyncio.sleep(3.5)  # the bomb's children exit; the sandbox is usable again
    assert (await run(sandbox, "echo survived")).text.strip() == "survived"
    assert children > 0
