"""Create -> envd healthy latency and idle memory: Emberbox's gVisor runtime vs bare runsc.

    sudo .venv/bin/python benchmarks/runtime_bench.py [--count 20] [--json]

"Ours" is the full ``GVisorRuntime.create``: address lease, netns + veth + nft, sparse ext4 +
loop mount + overlayfs, bundle, runsc run, envd /health 204, POST /init. "Bare" is only
``runsc run --detach`` of the same template tree (read-only overlayfs of its layers, runsc's
in-memory overlay for writes) into a netns prepared beforehand, running envd directly, until
``/health`` answers 204. Both start the same envd, so the ratio is our orchestration overhead.
Idle memory is the drop in the host's MemAvailable per sandbox after the sandboxes have
settled for a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from emberbox.runtimes.base import NetworkPolicy, SandboxSpec
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from emberbox.runtimes.gvisor.runsc import Runsc, with_hidden_net_sysctls
from emberbox.templates.base import build_base
from emberbox.templates.store import GUEST_PYTHON, TemplateStore

SETTLE_S = 5.0
BARE_SUBNET = "10.12"


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def pss_bytes(marker: str) -> int:
    """Proportional set size of every host process whose command line names ``marker`` (the
    runsc --root of one side: its sandbox, gofer and systrap stub processes)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "cmdline").read_bytes():
                continue
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def wait_health(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0) as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(f"{url}/health")).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.02)
    raise TimeoutError(f"{url} never became healthy")


# -- ours ----------------------------------------------------------------------------------


class Ours:
    name = "emberbox"

    def __init__(self) -> None:
        self.runtime = GVisorRuntime(GVisorConfig())
        self.marker = str(self.runtime.config.runsc_root)
        self.ids: list[str] = []

    async def setup(self) -> None:
        pass

    async def create(self) -> float:
        sandbox_id = f"bench{secrets.token_hex(4)}"
        self.ids.append(sandbox_id)
        started = time.monotonic()
        await self.runtime.create(
            SandboxSpec(sandbox_id=sandbox_id, template_id="base",
                        network=NetworkPolicy(allow_internet=False))
        )  # fmt: skip
        return time.monotonic() - started

    async def destroy_all(self) -> None:
        await asyncio.gather(*(self.runtime.kill(i) for i in self.ids))
        self.ids.clear()

    async def teardown(self) -> None:
        await self.destroy_all()


# -- bare runsc ----------------------------------------------------------------------------


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Bare:
    """runsc run of the same tree, with everything but runsc itself prepared up front."""

    name = "bare runsc"

    def __init__(self, count: int) -> None:
        self.count = count
        self.work = Path(tempfile.mkdtemp(prefix="bare-", dir="/var/tmp"))
        self.rootfs = self.work / "rootfs"
        self.config = GVisorConfig(data_dir=self.work)
        self.marker = str(self.config.runsc_root)
        self.runsc = Runsc(self.config)
        self.slots: list[int] = []
        self.running: list[str] = []
        self.free: list[int] = []

    async def setup(self) -> None:
        store = TemplateStore()
        layers = store.layer_paths(store.get("base"))
        self.rootfs.mkdir()
        lowerdir = ":".join(str(p) for p in reversed(layers))
        sh("mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowerdir}", str(self.rootfs))
        for i in range(self.count):
            ns, host_if, guest_if = f"ebbare{i}", f"ebbh{i}", f"ebbs{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", guest_if,
               "netns", ns)  # fmt: skip
            sh("ip", "addr", "add", f"{BARE_SUBNET}.{i}.1/30", "dev", host_if)
            sh("ip", "link", "set", host_if, "up")
            sh("ip", "-n", ns, "addr", "add", f"{BARE_SUBNET}.{i}.2/30", "dev", guest_if)
            sh("ip", "-n", ns, "link", "set", guest_if, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            self._bundle(i)
            self.free.append(i)

    def _bundle(self, i: int) -> None:
        bundle = self.work / f"b{i}"
        bundle.mkdir()
        spec = {
            "ociVersion": "1.0.0",
            "process": {
                "terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": "/",
                "args": [GUEST_PYTHON, "-m", "emberbox.templates.guest.envd_launch",
                         "--port", "49983"],
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            },
            "root": {"path": str(self.rootfs), "readonly": False},
            "hostname": f"bare{i}",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                                     {"type": "mount"},
                                     {"type": "network", "path": f"/var/run/netns/ebbare{i}"}]},
        }  # fmt: skip
        (bundle / "config.json").write_text(json.dumps(spec))

    async def create(self) -> float:
        i = self.free.pop(0)
        sandbox_id = f"bare{i}-{secrets.token_hex(3)}"
        argv = with_hidden_net_sysctls(self.work / "psys", [
            self.config.runsc, "--root", str(self.config.runsc_root),
            f"--platform={await self.runsc.platform()}", "--network=sandbox",
            "--overlay2=root:memory", "run", "--detach", "--bundle", str(self.work / f"b{i}"),
            sandbox_id,
        ])  # fmt: skip
        # runsc moves the veth's address into its netstack; give it back for reuse (untimed).
        sh("ip", "-n", f"ebbare{i}", "addr", "replace", f"{BARE_SUBNET}.{i}.2/30",
           "dev", f"ebbs{i}")  # fmt: skip
        log = os.open(self.work / f"{sandbox_id}.log", os.O_WRONLY | os.O_CREAT, 0o600)
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL,
                                                        stdout=log, stderr=log)  # fmt: skip
        finally:
            os.close(log)
        if await proc.wait() != 0:
            raise RuntimeError(f"bare runsc run failed, see {self.work}/{sandbox_id}.log")
        await wait_health(f"http://{BARE_SUBNET}.{i}.2:49983")
        elapsed = time.monotonic() - started
        self.running.append(sandbox_id)
        self.slots.append(i)
        return elapsed

    async def destroy_all(self) -> None:
        await asyncio.gather(*(self.runsc.delete(s) for s in self.running))
        self.running.clear()
        self.free = sorted(self.free + self.slots)
        self.slots.clear()

    async def teardown(self) -> None:
        await self.destroy_all()
        await asyncio.to_thread(self._remove_host_state)

    def _remove_host_state(self) -> None:
        for i in range(self.count):
            subprocess.run(["ip", "netns", "delete", f"ebbare{i}"], capture_output=True)
            subprocess.run(["ip", "link", "delete", f"ebbh{i}"], capture_output=True)
        subprocess.run(["umount", str(self.rootfs)], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


# -- measurement ---------------------------------------------------------------------------


async def measure(kind: Ours | Bare, count: int) -> dict[str, Any]:
    await kind.setup()
    try:
        baseline = mem_available()
        sequential = [await kind.create() for _ in range(count)]
        await asyncio.sleep(SETTLE_S)
        idle_mib = (baseline - mem_available()) / count / 2**20
        pss_mib = pss_bytes(kind.marker) / count / 2**20
        await kind.destroy_all()
        await asyncio.sleep(1.0)
        concurrent = list(await asyncio.gather(*(kind.create() for _ in range(count))))
        await kind.destroy_all()
    finally:
        await kind.teardown()
    return {
        "name": kind.name,
        "sequential_p50": statistics.median(sequential),
        "sequential_p95": pct(sequential, 0.95),
        "concurrent_p50": statistics.median(concurrent),
        "concurrent_p95": pct(concurrent, 0.95),
        "idle_mib_per_sandbox": idle_mib,
        "idle_pss_mib_per_sandbox": pss_mib,
    }


def report(ours: dict[str, Any], bare: dict[str, Any], count: int) -> str:
    cols = [("sequential_p50", "seq p50", 3), ("sequential_p95", "seq p95", 3),
            ("concurrent_p50", "conc p50", 3), ("concurrent_p95", "conc p95", 3),
            ("idle_mib_per_sandbox", "idle MiB", 1), ("idle_pss_mib_per_sandbox", "PSS MiB", 1)]
    lines = [f"create -> envd healthy (s), {count} sandboxes each; idle memory per sandbox (MiB:"
             " MemAvailable drop, PSS of runsc processes)",
             f"{'':12}" + "".join(f"{title:>10}" for _, title, _ in cols)]
    for row in (ours, bare):
        lines.append(f"{row['name']:12}" + "".join(f"{row[k]:10.{d}f}" for k, _, d in cols))
    lines.append(f"{'ratio':12}" + "".join(
        f"{ours[k] / bare[k] if bare[k] else float('nan'):10.2f}" for k, _, _ in cols))
    return "\n".join(lines)  # fmt: skip


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (netns, mounts, cgroups)", file=sys.stderr)
        return 2
    await build_base(TemplateStore())
    ours = await measure(Ours(), args.count)
    bare = await measure(Bare(args.count), args.count)
    if args.json:
        print(json.dumps({"count": args.count, "ours": ours, "bare": bare}))
    else:
        print(f"runsc platform: {await Runsc(GVisorConfig()).platform()}")
        print(report(ours, bare, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
