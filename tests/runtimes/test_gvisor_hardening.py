"""A sandbox behaves like a Linux machine under resource pressure (issue 8): a memory overrun
kills the offending process, not the sandbox; /tmp is on the sandbox's disk, not in its memory;
and a runsc failure is never taken for a dead sandbox."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from emberbox.envd.guest.oom import FILL_RATE, OVERRUN, OomGuard, count_kills, pick_victim
from emberbox.envd_client.handshake import handshake
from emberbox.host import cgroups
from emberbox.runtimes.base import RuntimeSandbox, SandboxSpec
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from emberbox.runtimes.gvisor.bundle import HOST_HEADROOM_MB
from emberbox.runtimes.gvisor.runsc import STUB_OOM_SCORE_ADJ, Runsc, RunscError
from emberbox.templates.store import Template, TemplateStore

from .gvisor_support import healthy, require_host, run

MiB = 1024 * 1024


# -- the guest's OOM killer, on a fake /proc ---------------------------------------------------


def _meminfo(total: int, available: int) -> str:
    return f"MemTotal: {total // 1024} kB\nMemFree: 0 kB\nMemAvailable: {available // 1024} kB\n"


def _fake_proc(root: Path, pid: int, rss_pages: int, adj: int = 0, comm: str = "x") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "statm").write_text(f"{rss_pages * 2} {rss_pages} 0 0 0 0 0\n")
    (d / "oom_score_adj").write_text(f"{adj}\n")
    (d / "comm").write_text(f"{comm}\n")


def test_victim_is_the_biggest_process_that_may_be_killed(tmp_path: Path):
    _fake_proc(tmp_path, 1, 10_000, comm="init")
    _fake_proc(tmp_path, 10, 90_000, comm="envd")
    _fake_proc(tmp_path, 11, 80_000, adj=-1000, comm="db")
    _fake_proc(tmp_path, 12, 20_000, comm="hog")
    _fake_proc(tmp_path, 13, 5_000, comm="shell")
    victim = pick_victim(protected=[10], limit=512 * MiB, proc=str(tmp_path))
    assert victim is not None and (victim.pid, victim.comm) == (12, "hog")
    # oom_score_adj shifts the choice as in Linux (points = rss + adj * limit / 1000).
    (tmp_path / "13" / "oom_score_adj").write_text("500")
    victim = pick_victim(protected=[10], limit=512 * MiB, proc=str(tmp_path))
    assert victim is not None and victim.pid == 13


def test_guard_kills_only_once_memory_is_used_up(tmp_path: Path):
    """A real child stands in for the hog: the guard's SIGKILL must reach it."""
    hog = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _fake_proc(tmp_path, hog.pid, 60_000, comm="hog")
        limit = 256 * MiB
        readings = iter([_meminfo(limit, limit - 50 * MiB), _meminfo(limit, 2 * MiB)])
        after_kill = _meminfo(limit, limit - 40 * MiB)
        guard = OomGuard(
            protected=lambda: (), limit=limit, proc=str(tmp_path),
            read_meminfo=lambda: next(readings, after_kill),
        )  # fmt: skip
        assert guard.check() == (50 * MiB, None)  # plenty left: nobody dies
        used, victim = guard.check()
        assert used == limit - 2 * MiB and victim is not None and victim.pid == hog.pid
        assert hog.wait(timeout=5) == -9  # SIGKILL, as Linux's OOM killer sends
        assert guard.interval(used) == 0.01  # near the limit it looks often
    finally:
        hog.kill()
        hog.wait()


@pytest.mark.parametrize("limit_mb", [64, 256, 1024, 16384])
def test_the_guard_looks_again_before_the_fastest_fill_uses_up_what_is_left(limit_mb: int):
    limit = limit_mb * MiB
    guard = OomGuard(protected=lambda: (), limit=limit, read_meminfo=lambda: _meminfo(limit, limit))
    for used in range(0, limit, limit // 64):
        room = limit - guard.reserve - used
        wait = guard.interval(used)
        assert 0.01 <= wait <= 0.25
        assert wait * FILL_RATE <= room or wait == 0.01, (used, wait)
    # A big sandbox with plenty left is not woken more than four times a second.
    assert limit_mb < 1024 or guard.interval(limit // 8) == 0.25
    # Several processes filling at once: the growth seen counts, twice over.
    used = limit // 4
    room = limit - guard.reserve - used
    fast = 3 * FILL_RATE
    expected = min(0.25, max(0.01, room / (2 * fast)))
    assert guard.interval(used, growth=fast) == pytest.approx(expected)
    assert limit_mb > 1024 or expected < guard.interval(used)


async def test_the_guard_chooses_again_when_memory_grows_while_its_victim_is_gone(
    tmp_path: Path,
):
    """Waiting for the victim's memory to come back is for memory being freed: memory that
    grows well past the limit meanwhile is another process filling it, which must not have
    the 2 s (a little growth, a bystander's, waits on)."""
    limit = 256 * MiB
    readings = iter(range(limit - 2 * MiB, 10 * limit, 8 * MiB))  # in use, growing
    looks = 0

    def meminfo() -> str:
        nonlocal looks
        looks += 1
        return _meminfo(limit, limit - next(readings))

    guard = OomGuard(protected=lambda: (), limit=limit, proc=str(tmp_path), read_meminfo=meminfo)
    looks = 0
    await guard._wait_released(pid=4242, timeout=2.0)  # (gone: no such process here)
    assert (OVERRUN + 2 * MiB) // (8 * MiB) <= looks <= (OVERRUN + 2 * MiB) // (8 * MiB) + 2

    # A kill that came late, past the limit by more than OVERRUN: memory not yet freed is no
    # filler, and the wait goes on until it comes back.
    readings = iter([limit + OVERRUN + 16 * MiB] * 20 + [limit // 2] * 5)
    looks = 0
    await guard._wait_released(pid=4242, timeout=2.0)
    assert looks == 21
    # However late the kill, a filler is chosen again by MemTotal + 2 * OVERRUN.
    readings = iter(range(limit + 2 * OVERRUN - 8 * MiB, 10 * limit, 4 * MiB))
    looks = 0
    await guard._wait_released(pid=4242, timeout=2.0)
    assert looks == 4  # (past MemTotal + 128 MiB at the fourth)


# -- real sandboxes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def hardening_runtime(
    base_template: Template, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GVisorRuntime]:
    """A runtime on a data dir of its own, so no other suite's orphan sweep touches it."""
    config = GVisorConfig(data_dir=tmp_path_factory.mktemp("hardening"))
    runtime = GVisorRuntime(config, TemplateStore())
    yield runtime
    await runtime.close()


@pytest.fixture
async def sandbox(hardening_runtime: GVisorRuntime) -> AsyncIterator[RuntimeSandbox]:
    spec = SandboxSpec(sandbox_id=f"h{secrets.token_hex(5)}", template_id="base", memory_mb=256)
    box = await hardening_runtime.create(spec)
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            await handshake(http, box.envd_url, box.defaults, "", timeout_s=30)
        yield box
    finally:
        await hardening_runtime.kill(spec.sandbox_id)


HOG = "python3 -c 'b = []\nwhile True: b.append(bytearray(16 << 20))'"


async def test_memory_hog_dies_alone_and_envd_answers(
    hardening_runtime: GVisorRuntime, sandbox: RuntimeSandbox
):
    group = f"{hardening_runtime.config.cgroup_base}/{sandbox.sandbox_id}"
    usage = cgroups.usage(group)
    assert usage is not None and usage.mem_limit == (256 + HOST_HEADROOM_MB) * MiB
    memsw = cgroups.CGROUP_ROOT / "memory" / group / "memory.memsw.limit_in_bytes"
    if cgroups.is_v1() and memsw.exists():  # swap adds nothing: memory plus swap is held to it
        assert int(memsw.read_text()) == usage.mem_limit
    stubs = [p for p in cgroups.procs(group)
             if not Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"runsc-")]  # fmt: skip
    assert stubs and all(
        int(Path(f"/proc/{p}/oom_score_adj").read_text()) == STUB_OOM_SCORE_ADJ for p in stubs
    )
    mem = await run(sandbox, "grep MemTotal /proc/meminfo")
    assert mem.text.split()[1] == str(256 * 1024)  # the guest sees its own limit, not the host's

    bystander = await run(sandbox, "nohup sleep 600 >/dev/null 2>&1 & echo $!")
    hog = await run(sandbox, HOG, timeout=60)
    assert (hog.exit_code, hog.status) == (-1, "signal: killed") or hog.exit_code == 137
    assert await healthy(sandbox)
    alive = await run(sandbox, f"kill -0 {bystander.text.strip()} && echo alive")
    assert alive.text.strip() == "alive"
    # A shell reports its killed child as 137, the way it would on Linux.
    shell = await run(sandbox, "python3 -c 'b = bytearray(600 << 20)'; echo rc=$?", timeout=60)
    assert "rc=137" in shell.text
    log = await hardening_runtime.boot_log(sandbox.sandbox_id)
    assert count_kills(log) == 2, log


async def test_tmp_fills_the_disk_not_the_memory(sandbox: RuntimeSandbox):
    write = await run(
        sandbox, "dd if=/dev/zero of=/tmp/big bs=1M count=2048 2>&1 | head -1;"
        "grep MemAvailable /proc/meminfo", timeout=120,
    )  # fmt: skip
    assert "No space left on device" in write.text, write.text
    available_kb = int(write.text.split("MemAvailable:")[1].split()[0])
    assert available_kb > 128 * 1024  # the GiB went to disk: most of the 256 MiB is still free
    again = await run(sandbox, "rm /tmp/big && echo fine > /tmp/small && cat /tmp/small")
    assert again.text.strip() == "fine"
    assert await healthy(sandbox)


async def test_dev_shm_is_capped_at_half_the_memory(sandbox: RuntimeSandbox):
    fill = await run(sandbox, "dd if=/dev/zero of=/dev/shm/x bs=1M count=1024 2>&1 | head -1;"
                     "du -m /dev/shm/x | cut -f1; rm /dev/shm/x")  # fmt: skip
    assert "No space left on device" in fill.text, fill.text
    assert int(fill.text.splitlines()[1]) <= 128
    assert await healthy(sandbox)


# -- runsc state -------------------------------------------------------------------------------


async def test_state_tells_a_missing_sandbox_from_a_failure(tmp_path: Path):
    """Only "runsc has no such container" means gone; anything else must not look like it."""
    require_host()
    runsc = Runsc(GVisorConfig(data_dir=tmp_path))
    runsc.config.runsc_root.mkdir(parents=True)
    assert await runsc.state("nosuchsandbox") is None
    # A state record runsc cannot read (here: garbage) is a failure, not a dead sandbox.
    (runsc.config.runsc_root / "broken_sandbox:broken.state").write_text("garbage")
    with pytest.raises(RunscError, match="broken"):
        await runsc.state("broken")
