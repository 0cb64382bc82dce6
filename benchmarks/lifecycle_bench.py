"""Stateful sandboxes through the control plane with the official ``e2b`` SDK, next to bare
``runsc checkpoint`` / ``runsc restore`` of the same kind of sandbox measured in the same run.

Measured (median/p95/p99 in ms, ratio to its baseline):
* create → first ``commands.run`` result: claimed from the warm pool, restored from the
  template's snapshot (empty pool), and cold (``EMBERBOX_TEMPLATE_SNAPSHOTS=0``: every create
  boots); baseline bare ``runsc restore``;
* pause and resume (``Sandbox.connect``) of a sandbox holding 256 MiB; baselines bare
  ``runsc checkpoint`` and ``runsc restore`` of a sandbox holding 256 MiB. Resumed at once,
  within the node's keep (``EMBERBOX_PAUSE_KEEP_S``), as an agent between turns does: its
  kept processes continue; resumed once the node moved those processes' memory to swap (as
  a pause resumed minutes later, still within the keep); and on a node that keeps none
  (``EMBERBOX_PAUSE_KEEP_S=0``, as after the keep): restored from the saved memory;
* a paused ``auto_resume`` sandbox holding 256 MiB woken by traffic: a proxied request to a
  server inside, until its answer (on the node that keeps none: restored); baseline bare
  ``runsc restore``;
* snapshot, fork x10 (one call), rollback in place;
* filesystem-only pause (``pause(mode="filesystem")``) of a sandbox that wrote 10 MiB in 200
  files, and its resume (a boot from those files) to the first command result; baselines the
  pause of a sandbox holding 256 MiB and a cold create to its first command result;
* N concurrent creates, each to its first command result, and the wall time of all (the
  sandboxes are killed only after that): from a warm pool of N, and with no pool (restores);
* host memory per idle sandbox (what the kernel charges its cgroup): pooled (never claimed),
  and running after a command; on a host whose swap is compressed RAM the node offloads
  idle ones there (``EMBERBOX_OFFLOAD_IDLE_S``, shortened here), so theirs adds what their
  swap costs in RAM (zram's compressed share); baselines the same kinds resident. A running
  one's figure is its mean over a while idle (its timers bring pages back, and the node
  offloads it again); its first command after the offload, baseline its second;
* host CPU per idle pooled sandbox (its cgroup's CPU time over 5 s): frozen, as the node
  keeps them; baseline two of them thawed by hand. The warm-pool creates alternate between
  the frozen pool and one thawed by hand, for what the claim's thaw costs, and (with swap) a
  claim of an offloaded pooled sandbox, whose pages come back from swap.

Every timed operation starts on a settled host (:func:`settle`: its CPUs under 20% busy), so
it does not share the two cores with the clean-up of the operation before it (a killed
sandbox's teardown, the unlinking of a removed checkpoint): each figure is the operation's own.

    .venv/bin/python benchmarks/lifecycle_bench.py [--n 10] [--concurrent 20] [--quick]

Needs root and runsc; runs in the benchmarks' own data dir (``_host.py``). ``--quick`` does
one of each (fork x2, 4 concurrent) with shorter idle windows, to prove every path still
works; its numbers mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from e2b import Sandbox

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._host import (
    boot,
    data_dir,
    ensure_base,
    free_page_reporting,
    gvisor_server,
    memory_fill_ms,
    require_root,
)
from benchmarks._stats import check, summary
from emberbox.envd_client import EnvdClient
from emberbox.host import cgroups, network
from emberbox.runtimes.base import SandboxSpec
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from emberbox.runtimes.gvisor.warm import TemplateSnapshots
from emberbox.templates.store import TemplateStore
from emberbox.vocabulary import OFFLOADED_BELOW_BYTES

WRITE_FILES = (
    "head -c 10M /dev/urandom > /home/user/data.bin && mkdir -p /home/user/src && "
    "for i in $(seq 200); do echo $i > /home/user/src/f$i; done"
)
SITE_PORT = 8000  # a server inside the sandbox that traffic wakes it for
HOLD_256 = "python3 -c 'b = b\"x\" * (256 << 20); import time; time.sleep(3600)' >/dev/null 2>&1 &"
LIMITS = {
    "EMBERBOX_CPU_OVERCOMMIT": "100",
    "EMBERBOX_MEMORY_OVERCOMMIT": "8",
    "EMBERBOX_RATE_PER_S": "1000",
    "EMBERBOX_RATE_BURST": "1000",
    "EMBERBOX_MAX_SANDBOXES_PER_TEAM": "100",
}


def timed(fn: Callable[[], object]) -> float:
    """``fn``'s duration, started on a settled host."""
    settle()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def settle(quiet: float = 0.2, timeout_s: float = 10.0) -> None:
    """Wait until the host's CPUs are under ``quiet`` busy over a quarter second (at most
    ``timeout_s``): the previous operation's background clean-up is done."""
    deadline = time.monotonic() + timeout_s
    while host_busy(0.25) > quiet and time.monotonic() < deadline:
        pass


# ---- bare runsc -------------------------------------------------------------------------------


async def bare_checkpoint_restore(n: int) -> tuple[list[float], list[float]]:
    """runsc checkpoint (--leave-running) and runsc restore of one sandbox holding 256 MiB,
    without API, node or SDK: what the runtime's pause and resume are built from."""
    directory = data_dir()
    runtime = GVisorRuntime(
        GVisorConfig(data_dir=directory, template_snapshots=False), TemplateStore(directory)
    )
    sandbox_id = f"bench{secrets.token_hex(4)}"
    spec = SandboxSpec(sandbox_id=sandbox_id, template_id="base", memory_mb=1024)
    sandbox = await boot(runtime, spec)
    image = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    saves: list[float] = []
    restores: list[float] = []
    try:
        async with EnvdClient(sandbox.envd_url) as envd:
            check((await envd.run(HOLD_256)).exit_code == 0, "could not start the 256 MiB holder")
            await asyncio.sleep(2)
        paths = runtime._paths(sandbox_id)
        record = await runtime._require(sandbox_id)
        lease = runtime._lease_of(sandbox_id, record)
        check(lease is not None, "no lease")
        assert lease is not None
        for _ in range(n):
            shutil.rmtree(image, ignore_errors=True)
            image.mkdir()
            settle()
            start = time.perf_counter()
            await runtime.runsc.checkpoint(sandbox_id, image, paths.disk)
            saves.append(time.perf_counter() - start)
            await runtime.runsc.delete(sandbox_id)
            await network.readdress(lease)
            settle()
            start = time.perf_counter()
            await runtime.runsc.restore(sandbox_id, paths.bundle, image, paths.log, paths.disk)
            restores.append(time.perf_counter() - start)
            async with EnvdClient(sandbox.envd_url) as envd:
                check(await envd.health(timeout=10), "restored envd does not answer")
    finally:
        await runtime.kill(sandbox_id)
        shutil.rmtree(image, ignore_errors=True)
    return saves, restores


# ---- through the control plane ----------------------------------------------------------------


def sdk_env(server: object) -> dict[str, Any]:
    env = server.sdk_env(server.first_key)  # type: ignore[attr-defined]
    return {"api_key": env["E2B_API_KEY"], "api_url": env["E2B_API_URL"],
            "sandbox_url": env["E2B_SANDBOX_URL"]}  # fmt: skip


def first_command(
    opts: dict[str, Any], template: str = "base", settled: bool = True
) -> tuple[float, Sandbox]:
    """create → first command result, and the sandbox (still running)."""
    if settled:
        settle()
    start = time.perf_counter()
    sbx = Sandbox.create(template, timeout=300, **opts)
    result = sbx.commands.run("true")
    elapsed = time.perf_counter() - start
    check(result.exit_code == 0, "first command failed")
    return elapsed, sbx


def tti(opts: dict[str, Any], template: str = "base") -> float:
    """create → first command result; the sandbox is killed afterwards (not timed)."""
    elapsed, sbx = first_command(opts, template)
    sbx.kill()
    return elapsed


def concurrent_ttis(opts: dict[str, Any], count: int) -> tuple[list[float], float]:
    """``count`` creates at once, each timed to its first command result, and the wall time
    until all have one. The sandboxes are killed only after that (not timed): a kill is host
    work that would otherwise land inside the others' creates."""
    with ThreadPoolExecutor(count) as pool:
        start = time.perf_counter()
        done = list(pool.map(lambda _i: first_command(opts, settled=False), range(count)))
        wall = time.perf_counter() - start
        list(pool.map(lambda pair: pair[1].kill(), done))
    return [elapsed for elapsed, _ in done], wall


def wait_for_template_snapshot(directory: Path, timeout_s: float = 120) -> None:
    snapshots = TemplateSnapshots(GVisorConfig(data_dir=directory).template_snapshots_dir)
    deadline = time.monotonic() + timeout_s
    while not snapshots.taken("base"):
        check(time.monotonic() < deadline, "the template snapshot never appeared")
        time.sleep(0.2)


def pooled_ids(directory: Path) -> set[str]:
    """The sandboxes the server's embedded node keeps in its warm pool (its records say so)."""
    ids = set()
    for record in (directory / "node" / "sandboxes").glob("*.json"):
        try:
            if json.loads(record.read_text())["state"] == "pooled":
                ids.add(record.stem)
        except (OSError, ValueError, KeyError):
            continue
    return ids


def wait_for_pool(directory: Path, size: int, timeout_s: float = 300) -> set[str]:
    """Until the pool holds ``size`` sandboxes, every one frozen: how a pool that waits for
    creates sits (the node freezes a pooled sandbox once its standby shells are replaced)."""
    deadline = time.monotonic() + timeout_s
    while len(ids := pooled_ids(directory)) < size or not all(map(frozen, ids)):
        check(time.monotonic() < deadline, f"the warm pool never reached {size}: {len(ids)}")
        time.sleep(0.1)
    return ids


def _group(sandbox_id: str) -> str:
    return f"{GVisorConfig(data_dir=data_dir()).cgroup_base}/{sandbox_id}"


def frozen(sandbox_id: str) -> bool:
    return cgroups.freezer_state(_group(sandbox_id)) == "frozen"


def thaw_by_hand(ids: set[str]) -> None:
    """The baseline of a frozen pool: pooled sandboxes running, as they did before the node
    froze them (a claim's own thaw then finds nothing to do)."""
    for sandbox_id in ids:
        cgroups.freeze(_group(sandbox_id), False)


def freeze_by_hand(ids: set[str]) -> None:
    for sandbox_id in ids:
        cgroups.freeze(_group(sandbox_id), True)


def cpu_seconds(ids: set[str], seconds: float) -> list[float]:
    """CPU time each sandbox's cgroup (sentry, gofer, stubs) used over ``seconds``."""

    def cpu_ns() -> dict[str, int]:
        usage = {i: cgroups.usage(_group(i)) for i in ids}
        return {i: u.cpu_ns for i, u in usage.items() if u is not None}

    before = cpu_ns()
    time.sleep(seconds)
    after = cpu_ns()
    check(len(before) == len(after) == len(ids), "a pooled sandbox lost its cgroup")
    return [(after[i] - before[i]) / 1e9 for i in ids]


LATENCY_POOL = 2  # the pool the one-at-a-time creates claim from (the default auto size)


def host_busy(seconds: float) -> float:
    """Share of the host's CPUs in use over ``seconds`` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def warm_pool(n: int, concurrent: int, idle_s: float) -> dict[str, list[float]]:
    """Creates claiming a pooled sandbox one at a time, from a pool of two refilled in between
    (the refill starts half a second after a claim, as it would); then ``concurrent`` at once
    from a pool of that size; and what an idle pooled sandbox costs the host (memory, and CPU
    over ``idle_s``)."""
    out: dict[str, list[float]] = {}
    # Claims soon after one another: the newest pooled sandbox is never offloaded as idle.
    env = {**LIMITS, "EMBERBOX_WARM_POOL": str(LATENCY_POOL), "EMBERBOX_OFFLOAD_IDLE_S": "0"}
    with tempfile.TemporaryDirectory() as tmp, gvisor_server(Path(tmp), env) as server:
        opts = sdk_env(server)
        tti(opts)  # the pool learns what is asked for; the template is snapshotted
        samples: dict[str, list[float]] = {"frozen": [], "thawed": [], "offloaded": []}
        modes = list(samples) if cgroups.swap_in_ram() else ["frozen", "thawed"]
        for i in range(len(modes) * n):  # from a frozen pool, one thawed by hand, offloaded
            ready = wait_for_pool(data_dir(), LATENCY_POOL)
            # Claims take the newest; the others wait offloaded (where the host can).
            older = wait_offloaded(ready, LATENCY_POOL - 1) if "offloaded" in modes else set()
            if i == 0:
                resident = [host_memory(sid) for sid in ready - older]
                check(all(u > 0 for u in resident), "no memory charged to a pooled sandbox")
                out["host memory per idle pooled sandbox, resident (the newest), MiB"] = [
                    u / 2**20 for u in resident
                ]
            mode = modes[i % len(modes)]
            newest = None
            if mode == "thawed":  # the one a claim takes, left running as before freezing
                thaw_by_hand(ready - older)
                time.sleep(0.5)  # its timers caught up
            elif mode == "offloaded":  # take the newest, untimed; then one offloaded
                settle()  # not between the two: a refill 0.5 s on would be the newest then
                newest = Sandbox.create(timeout=300, **opts)
            elapsed, sbx = first_command(opts, settled=newest is None)
            samples[mode].append(elapsed)
            check(
                sbx.sandbox_id in (older if newest else ready - older),
                f"{mode}: claimed {sbx.sandbox_id}, pooled {ready}, offloaded {older}",
            )
            if mode == "thawed":  # as the node left the ones still pooled
                freeze_by_hand((ready - older) & pooled_ids(data_dir()))
            for claimed in (sbx, newest):
                if claimed is not None:
                    claimed.kill()
        out[f"warm-pool create → first command (pool of {LATENCY_POOL})"] = samples["frozen"]
        out["  the same, pool thawed by hand beforehand"] = samples["thawed"]
        if samples["offloaded"]:
            out["  the same, claiming a pooled sandbox offloaded to swap"] = samples["offloaded"]
        else:
            print("(no swap in RAM here: pooled sandboxes stay resident; offload not measured)")

    # A pool nobody claimed from for a while: its newest sandbox is offloaded too.
    env = {**LIMITS, "EMBERBOX_WARM_POOL": str(concurrent),
           "EMBERBOX_OFFLOAD_IDLE_S": IDLE_OFFLOAD_S}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, gvisor_server(Path(tmp), env) as server:
        opts = sdk_env(server)
        tti(opts)
        ready = wait_for_pool(data_dir(), concurrent)
        if cgroups.swap_in_ram():  # every one offloaded to swap: charge + its share
            wait_offloaded(ready, concurrent)
            time.sleep(2)  # offloads still under way finish (40 steps, 50 ms apart, at most)
            ratio = swap_ram_per_byte()
            out["  offloaded, idle: resident + their swap's RAM, MiB"] = [
                (host_memory(i) + cgroups.swapped(_group(i)) * ratio) / 2**20 for i in ready
            ]
            out["  offloaded, idle: resident alone, MiB"] = [host_memory(i) / 2**20 for i in ready]
        out["host CPU per idle pooled sandbox, % of one core"] = [
            100 * s / idle_s for s in cpu_seconds(ready, idle_s)
        ]
        some = set(sorted(ready)[:2])
        thaw_by_hand(some)
        time.sleep(1)
        out["  the same, thawed by hand (baseline), % of one core"] = [
            100 * s / idle_s for s in cpu_seconds(some, idle_s)
        ]
        each, wall = concurrent_ttis(opts, concurrent)
        out[f"{concurrent} concurrent creates (pool of {concurrent}), each"] = each
        out[f"{concurrent} concurrent creates (pool of {concurrent}), all"] = [wall]
    return out


IDLE_OFFLOAD_S = "3"  # EMBERBOX_OFFLOAD_IDLE_S where idle sandboxes' memory is measured


def idle_running(count: int, window_s: float) -> dict[str, list[float]]:
    """Host memory of running sandboxes left idle after a command: right after it
    (resident), then, where the node offloads idle sandboxes, each one's mean over
    ``window_s`` (resident + its swap's RAM); and their first command after that."""
    out: dict[str, list[float]] = {}
    env = {**LIMITS, "EMBERBOX_WARM_POOL": "0", "EMBERBOX_OFFLOAD_IDLE_S": IDLE_OFFLOAD_S}
    with tempfile.TemporaryDirectory() as tmp, gvisor_server(Path(tmp), env) as server:
        opts = sdk_env(server)
        tti(opts)
        wait_for_template_snapshot(data_dir())
        held = [Sandbox.create(timeout=600, **opts) for _ in range(count)]
        for sbx in held:
            check(sbx.commands.run("true").exit_code == 0, "idle sandbox does not run")
        used = [host_memory(sbx.sandbox_id) for sbx in held]  # before the node's idle_s
        check(all(u > 0 for u in used), "no memory charged to an idle sandbox's cgroup")
        out["host memory per idle running sandbox, resident, MiB"] = [u / 2**20 for u in used]
        if cgroups.swap_in_ram():
            wait_offloaded({sbx.sandbox_id for sbx in held}, count)
            sums = [0.0] * count
            samples = 0
            deadline = time.monotonic() + window_s
            while time.monotonic() < deadline:
                ratio = swap_ram_per_byte()
                for k, sbx in enumerate(held):
                    group = _group(sbx.sandbox_id)
                    sums[k] += host_memory(sbx.sandbox_id) + cgroups.swapped(group) * ratio
                samples += 1
                time.sleep(1.0)
            out[f"  offloaded, idle {window_s:.0f} s: resident + their swap's RAM, MiB"] = [
                total / samples / 2**20 for total in sums
            ]
            firsts, seconds = [], []
            for sbx in held:
                firsts.append(timed(functools.partial(sbx.commands.run, "true")))
                seconds.append(timed(functools.partial(sbx.commands.run, "true")))
            out["commands.run after an idle offload, the first"] = firsts
            out["  the second (its pages back)"] = seconds
        else:
            print("(no swap in RAM here: idle sandboxes stay resident; offload not measured)")
        for sbx in held:
            sbx.kill()
        if cgroups.swap_in_ram():
            out.update(resume_in_swap(opts, count))
    return out


def resume_in_swap(opts: dict[str, Any], n: int) -> dict[str, list[float]]:
    """``n`` pauses of a sandbox holding 256 MiB, each resumed (``Sandbox.connect``) once the
    node has moved the memory of the processes it keeps to swap (``EMBERBOX_OFFLOAD_IDLE_S``
    after the pause): a resume minutes after a pause, within the keep; and what such a kept
    sandbox costs the host meanwhile."""
    sbx = Sandbox.create(timeout=600, **opts)
    group = _group(sbx.sandbox_id)
    try:
        check(sbx.commands.run(HOLD_256).exit_code == 0, "could not hold 256 MiB")
        time.sleep(2)
        resumes, costs = [], []
        for _ in range(n):
            sbx.pause()
            wait_offloaded({sbx.sandbox_id}, 1)
            ratio = swap_ram_per_byte()
            costs.append((host_memory(sbx.sandbox_id) + cgroups.swapped(group) * ratio) / 2**20)
            settle()
            resumes.append(timed(lambda: Sandbox.connect(sbx.sandbox_id, **opts)))
            check(sbx.commands.run("true").exit_code == 0, "resumed sandbox does not run")
    finally:
        sbx.kill()
    return {
        "resume, kept in swap (256 MiB held)": resumes,
        # (the 256 MiB are one byte repeated: they compress to almost nothing)
        "  paused, kept in swap: in RAM with its swap's share, MiB": costs,
    }


def wait_offloaded(ids: set[str], count: int, timeout_s: float = 60) -> set[str]:
    """Until ``count`` of ``ids`` have their memory in swap, keeping less resident than the
    node counts as offloaded (``OFFLOADED_BELOW_BYTES``; ~4 MiB is usual): those. The node
    offloads pooled sandboxes behind the newest of their template, and idle ones, step by
    step."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = {i: host_memory(i) for i in ids}
        done = {i for i, used in held.items() if 0 < used < OFFLOADED_BELOW_BYTES}
        if len(done) >= count:
            return done
        resident = {i: f"{used / 2**20:.1f} MiB" for i, used in held.items()}
        check(time.monotonic() < deadline, f"{len(done)} of {count} offloaded: {resident}")
        time.sleep(0.1)


def swap_ram_per_byte() -> float:
    """RAM a byte in swap costs: what the zram devices use for what they hold."""
    stored = used = 0
    for device in Path("/sys/block").glob("zram*"):
        fields = (device / "mm_stat").read_text().split()
        stored, used = stored + int(fields[0]), used + int(fields[2])  # orig, mem_used_total
    check(stored > 0, "pages went to swap, but no zram device holds any (zswap is not counted)")
    return used / stored


def host_memory(sandbox_id: str) -> int:
    """Host memory charged to the sandbox's cgroup: every page its runsc processes (sentry,
    gofer, systrap stubs) hold, the guest's memory included, each counted once. Summing their
    PSS does neither: the gofer's command line does not name the sandbox, and the stubs share
    one address space, so their pages would count once per stub."""
    used = cgroups.usage(f"{GVisorConfig(data_dir=data_dir()).cgroup_base}/{sandbox_id}")
    return used.mem_used if used is not None else 0


def filesystem_pause(opts: dict[str, Any], n: int) -> dict[str, list[float]]:
    """Pause keeping only the files, and the boot from them to a first command result."""
    sbx = Sandbox.create(timeout=600, **opts)
    try:
        check(sbx.commands.run(WRITE_FILES).exit_code == 0, "could not write the files")
        pauses, reboots = [], []
        for _ in range(n):
            settle()
            pauses.append(timed(lambda: sbx.pause(mode="filesystem")))
            settle()
            start = time.perf_counter()
            back = Sandbox.connect(sbx.sandbox_id, **opts)
            check(back.commands.run("test -s /home/user/src/f200").exit_code == 0,
                  "the rebooted sandbox lost its files")  # fmt: skip
            reboots.append(time.perf_counter() - start)
    finally:
        sbx.kill()
    return {
        "filesystem pause (10 MiB written)": pauses,
        "reboot resume → first command": reboots,
    }


def pause_resume(opts: dict[str, Any], n: int) -> tuple[list[float], list[float]]:
    """``n`` pauses of a sandbox holding 256 MiB, each resumed at once (``Sandbox.connect``)."""
    sbx = Sandbox.create(timeout=600, **opts)
    try:
        check(sbx.commands.run(HOLD_256).exit_code == 0, "could not hold 256 MiB")
        time.sleep(2)
        pauses, resumes = [], []
        for _ in range(n):
            pauses.append(timed(sbx.pause))
            resumes.append(timed(lambda: Sandbox.connect(sbx.sandbox_id, **opts)))
            check(sbx.commands.run("true").exit_code == 0, "resumed sandbox does not run")
        return pauses, resumes
    finally:
        sbx.kill()


def wake_by_traffic(opts: dict[str, Any], n: int) -> list[float]:
    """``n`` proxied requests to a server inside a paused ``auto_resume`` sandbox holding 256
    MiB, each timed until its answer: the resume the request causes, then the request."""
    lifecycle: Any = {"on_timeout": "pause", "auto_resume": True}
    sbx = Sandbox.create(timeout=600, lifecycle=lifecycle, **opts)
    try:
        check(sbx.commands.run(HOLD_256).exit_code == 0, "could not hold 256 MiB")
        sbx.commands.run(f"setsid python3 -m http.server {SITE_PORT} -d /tmp >/dev/null 2>&1 &")
        site = {"Host": sbx.get_host(SITE_PORT)}
        with httpx.Client(base_url=opts["sandbox_url"], timeout=120) as proxy:
            deadline = time.monotonic() + 30
            while proxy.get("/", headers=site).status_code != 200:
                check(time.monotonic() < deadline, "the server inside never answered")
                time.sleep(0.1)
            time.sleep(2)
            wakes = []
            for _ in range(n):
                sbx.pause()
                settle()
                start = time.perf_counter()
                r = proxy.get("/", headers=site)
                wakes.append(time.perf_counter() - start)
                check(r.status_code == 200, f"the woken sandbox answered {r.status_code}")
        return wakes
    finally:
        sbx.kill()


def through_api(n: int, forks: int, concurrent: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # (a node that keeps no paused sandbox's processes: every resume restores)
        cold_env = {**LIMITS, "EMBERBOX_TEMPLATE_SNAPSHOTS": "0", "EMBERBOX_PAUSE_KEEP_S": "0"}
        with gvisor_server(Path(tmp) / "cold", cold_env) as server:
            opts = sdk_env(server)
            out["cold create → first command"] = [tti(opts) for _ in range(n)]
            out.update(filesystem_pause(opts, n))
            pauses, resumes = pause_resume(opts, n)
            out["pause, none kept (256 MiB held)"] = pauses
            out["resume, restored (256 MiB held)"] = resumes
            out["wake by traffic → answer, restored (256 MiB)"] = wake_by_traffic(opts, n)

    with tempfile.TemporaryDirectory() as tmp, gvisor_server(Path(tmp), LIMITS) as server:
        opts = sdk_env(server)
        tti(opts)  # the first create boots and has the template snapshotted
        wait_for_template_snapshot(data_dir())
        out["restore create → first command"] = [tti(opts) for _ in range(n)]

        pauses, resumes = pause_resume(opts, n)
        out["pause (256 MiB held)"] = pauses
        out["resume, kept (256 MiB held)"] = resumes

        src = Sandbox.create(timeout=600, **opts)
        try:
            shots: list[str] = []
            takes = []
            for _ in range(n):
                settle()
                start = time.perf_counter()
                shots.append(src.create_snapshot().snapshot_id)
                takes.append(time.perf_counter() - start)
            out["snapshot"] = takes
            api = httpx.Client(base_url=opts["api_url"], headers={"X-API-KEY": opts["api_key"]},
                               timeout=120)  # fmt: skip
            rollbacks = []
            for shot in shots:
                settle()
                start = time.perf_counter()
                r = api.post(f"/sandboxes/{src.sandbox_id}/rollback", json={"snapshotID": shot})
                rollbacks.append(time.perf_counter() - start)
                check(r.status_code == 200, f"rollback answered {r.status_code}: {r.text}")
            out["rollback"] = rollbacks
            for shot in shots:
                Sandbox.delete_snapshot(shot, **opts)
            fork_times = []
            for _ in range(max(1, n // 5)):
                settle()
                start = time.perf_counter()
                results = src.fork(count=forks, timeout=120)
                fork_times.append(time.perf_counter() - start)
                for fork in results:
                    check(isinstance(fork, Sandbox), f"a fork failed: {fork}")
                    if isinstance(fork, Sandbox):
                        fork.kill()
            out[f"fork x{forks}"] = fork_times
        finally:
            src.kill()

        each, wall = concurrent_ttis(opts, concurrent)
        out[f"{concurrent} concurrent creates (no pool), each"] = each
        out[f"{concurrent} concurrent creates (no pool), all"] = [wall]

    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="one of each, to prove it works")
    args = parser.parse_args()
    idle_s, window_s = 5.0, 60.0  # idle pooled sandboxes' CPU; idle running ones' memory
    if args.quick:
        args.n, args.forks, args.concurrent = 1, 2, 4
        idle_s, window_s = 2.0, 4.0
    require_root()
    ensure_base(data_dir())
    grace = "normal" if cgroups.moves_wait_for_grace_periods() else "expedited"
    print(f"host: RCU grace periods {grace} (scripts/host-rcu.sh; every runsc start waits on them)")
    fresh, again = memory_fill_ms()
    print(f"host: filling 256 MiB of fresh shared memory {fresh:.0f} ms, the same pages again "
          f"{again:.0f} ms (a restore fills the sandbox's memory so; free page reporting to "
          f"a hypervisor: {free_page_reporting()})")  # fmt: skip
    saves, restores = asyncio.run(bare_checkpoint_restore(args.n))
    bare_save = summary("bare runsc checkpoint (256 MiB held)", saves)
    bare_restore = summary("bare runsc restore (256 MiB held)", restores)
    rows = warm_pool(args.n, args.concurrent, idle_s)
    rows.update(idle_running(max(1, args.n // 2), window_s))
    rows.update(through_api(args.n, args.forks, args.concurrent))
    baselines = {
        "pause (256 MiB held)": bare_save,
        "pause, none kept (256 MiB held)": bare_save,
        "resume, kept (256 MiB held)": bare_restore,
        "resume, restored (256 MiB held)": bare_restore,
        "wake by traffic → answer, restored (256 MiB)": bare_restore,
        "resume, kept in swap (256 MiB held)": bare_restore,
        "restore create → first command": bare_restore,
        f"warm-pool create → first command (pool of {LATENCY_POOL})": bare_restore,
        "cold create → first command": bare_restore,
    }
    second = {  # baselines measured through the API in the same run
        "filesystem pause (10 MiB written)": "pause (256 MiB held)",
        "reboot resume → first command": "cold create → first command",
        "commands.run after an idle offload, the first": "  the second (its pages back)",
    }
    measured: dict[str, dict[str, float]] = {}
    mib: dict[str, dict[str, float]] = {}
    percent: list[dict[str, float]] = []
    resident = ""  # the last resident row: the baseline of the offloaded rows after it
    for name, samples in rows.items():
        if name.endswith(", MiB"):
            mib[name] = summary(name.removesuffix(", MiB"), samples, "MiB")
            if name.endswith(" resident, MiB") or name.endswith("(the newest), MiB"):
                resident = name
            elif "resident + " in name and resident:
                ratio = mib[name]["median"] / mib[resident]["median"]
                print(f"{'':<44} ratio of offloaded to resident: {ratio:.2f}x")
            continue
        if name.endswith(", % of one core"):
            percent.append(summary(name.removesuffix(", % of one core"), samples, "%"))
            if len(percent) == 2 and percent[1]["median"] > 0:
                ratio = percent[0]["median"] / percent[1]["median"]
                print(f"{'':<44} ratio of frozen to thawed: {ratio:.3f}x")
            continue
        row = measured[name] = summary(name, samples)
        base = baselines.get(name)
        if base:
            print(
                f"{'':<44} ratio to its bare runsc baseline: {row['median'] / base['median']:.2f}x"
            )
    for name, other in second.items():
        if name in measured and other in measured:
            ratio = measured[name]["median"] / measured[other]["median"]
            print(f"{name}: {ratio:.2f}x the {other}")


if __name__ == "__main__":
    main()
