"""Create -> envd healthy latency and idle memory: Emberbox's gVisor runtime vs bare runsc.

    sudo .venv/bin/python benchmarks/runtime_bench.py [--count 20] [--json] [--quick]

"Ours" is ``GVisorRuntime.create`` plus the node's envd handshake: address lease, netns + veth
+ nft, sparse ext4 + loop mount + overlayfs, bundle, runsc run, envd /health 204, POST /init.
"Bare" is only ``runsc run --detach`` of the same template tree (read-only overlayfs of its
layers, runsc's in-memory overlay for writes) into a netns prepared beforehand, running envd
directly, until ``/health`` answers 204. Both start the same envd, so the ratio is our
orchestration overhead. The bare side writes its own runsc command line and knows nothing of
our runtime's modules, so a change there cannot break the baseline. Idle memory is the drop in
the host's MemAvailable per sandbox after the sandboxes have settled for a few seconds.

Sandboxes live in the benchmarks' own data dir (see ``_host.py``). ``--quick`` boots two of
each, to prove every step still works; its numbers mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._host import boot, data_dir, ensure_base, require_root
from benchmarks._stats import BenchFailed, check, percentile
from emberbox.runtimes.base import NetworkPolicy, SandboxSpec
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from emberbox.templates.store import GUEST_PYTHON, TemplateStore

BARE_SUBNET = "10.12"
ENVD_PORT = 49983

# runsc probes /proc/sys/net to decide whether it runs in the root netns, and on recent kernels
# that exists in every netns, so --network=sandbox refuses to start (docs/runtimes.md). As our
# runtime does, run it in a private mount namespace whose /proc/sys has no ``net``.
# $1 = staging dir, the rest is the runsc argv.
HIDE_NET_SYSCTLS = """set -e
d="$1"; shift
mount --bind /proc/sys "$d"
mount -t tmpfs -o size=64k,mode=555 none /proc/sys
for s in kernel vm fs; do mkdir /proc/sys/$s; mount --bind "$d/$s" /proc/sys/$s; done
umount -l "$d"
exec "$@"
"""


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


def tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


# -- ours ----------------------------------------------------------------------------------


class Ours:
    name = "emberbox"

    def __init__(self, directory: Path) -> None:
        # Booted like the bare side: restores from template snapshots are lifecycle_bench's.
        config = GVisorConfig(data_dir=directory, template_snapshots=False)
        self.runtime = GVisorRuntime(config)
        self.marker = str(config.runsc_root)
        self.ids: list[str] = []

    async def setup(self) -> None:
        pass

    async def create(self) -> float:
        sandbox_id = f"bench{secrets.token_hex(4)}"
        self.ids.append(sandbox_id)
        started = time.monotonic()
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            template_id="base",
            network=NetworkPolicy(allow_internet=False),
        )
        await boot(self.runtime, spec)
        return time.monotonic() - started

    async def destroy_all(self) -> None:
        await asyncio.gather(*(self.runtime.kill(i) for i in self.ids))
        self.ids.clear()

    async def teardown(self) -> None:
        await self.destroy_all()


# -- bare runsc ----------------------------------------------------------------------------


def sh(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    check(done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}")


class Bare:
    """runsc run of the same tree, with everything but runsc itself prepared up front."""

    name = "bare runsc"

    def __init__(self, count: int, directory: Path) -> None:
        self.count = count
        self.store = TemplateStore(directory)
        self.work = Path(tempfile.mkdtemp(prefix="bare-", dir="/var/tmp"))
        self.rootfs = self.work / "rootfs"
        self.runsc = os.environ.get("EMBERBOX_RUNSC") or shutil.which("runsc") or "runsc"
        self.root = self.work / "runsc"
        self.marker = str(self.root)
        self.platform = "ptrace"
        self.slots: list[int] = []
        self.running: list[str] = []
        self.free: list[int] = []

    def _runsc(self, *args: str) -> list[str]:
        return [self.runsc, "--root", str(self.root), f"--platform={self.platform}", *args]

    async def setup(self) -> None:
        helped = await asyncio.to_thread(
            subprocess.run, [self.runsc, "help", "platforms"], capture_output=True, text=True
        )
        platforms = helped.stdout.split()
        self.platform = "systrap" if "systrap" in platforms else "ptrace"
        layers = self.store.layer_paths(self.store.get("base"))
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
                "args": [GUEST_PYTHON, "-m", "emberbox.envd", "--port", str(ENVD_PORT)],
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
        staging = self.work / "psys"
        staging.mkdir(exist_ok=True)
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", HIDE_NET_SYSCTLS, "sh",
                str(staging), *self._runsc("--network=sandbox", "--overlay2=root:memory", "run",
                                           "--detach", "--bundle", str(self.work / f"b{i}"),
                                           sandbox_id)]  # fmt: skip
        # runsc moves the veth's address into its netstack; give it back for reuse (untimed).
        sh("ip", "-n", f"ebbare{i}", "addr", "replace", f"{BARE_SUBNET}.{i}.2/30",
           "dev", f"ebbs{i}")  # fmt: skip
        log_path = self.work / f"{sandbox_id}.log"
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o600)
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL,
                                                        stdout=log, stderr=log)  # fmt: skip
        finally:
            os.close(log)
        self.running.append(sandbox_id)
        self.slots.append(i)
        check(await proc.wait() == 0, f"bare runsc run failed:\n{tail(log_path)}")
        await self._wait_health(sandbox_id, f"http://{BARE_SUBNET}.{i}.2:{ENVD_PORT}", log_path)
        return time.monotonic() - started

    async def _wait_health(self, sandbox_id: str, url: str, log: Path) -> None:
        """Until envd answers 204; fails at once, with the sandbox's output, if it stopped."""
        deadline = time.monotonic() + 60
        next_state = time.monotonic() + 1.0
        async with httpx.AsyncClient(timeout=1.0) as http:
            while time.monotonic() < deadline:
                try:
                    if (await http.get(f"{url}/health")).status_code == 204:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > next_state:
                    next_state += 1.0
                    state = await asyncio.to_thread(
                        subprocess.run, self._runsc("state", sandbox_id), capture_output=True,
                        text=True)  # fmt: skip
                    if '"status": "running"' not in state.stdout:
                        raise BenchFailed(f"bare sandbox {sandbox_id} stopped:\n{tail(log)}")
                await asyncio.sleep(0.02)
        raise BenchFailed(f"bare sandbox {sandbox_id}: envd never answered:\n{tail(log)}")

    async def destroy_all(self) -> None:
        for sandbox_id in self.running:
            await asyncio.to_thread(subprocess.run, self._runsc("delete", "--force", sandbox_id),
                                    capture_output=True)  # fmt: skip
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


async def measure(kind: Ours | Bare, count: int, settle_s: float) -> dict[str, Any]:
    await kind.setup()
    try:
        baseline = mem_available()
        sequential = [await kind.create() for _ in range(count)]
        await asyncio.sleep(settle_s)
        idle_mib = (baseline - mem_available()) / count / 2**20
        pss_mib = pss_bytes(kind.marker) / count / 2**20
        check(pss_mib > 0, f"{kind.name}: no runsc process found under {kind.marker}")
        await kind.destroy_all()
        await asyncio.sleep(1.0)
        concurrent = list(await asyncio.gather(*(kind.create() for _ in range(count))))
        await kind.destroy_all()
    finally:
        await kind.teardown()
    row: dict[str, Any] = {"name": kind.name}
    for (label, _), samples in zip(SIDES, (sequential, concurrent), strict=True):
        for q in (50, 95, 99):
            row[f"{label}_p{q}"] = percentile(samples, q)
    row["idle_mib_per_sandbox"] = idle_mib
    row["idle_pss_mib_per_sandbox"] = pss_mib
    return row


SIDES = (("sequential", "seq"), ("concurrent", "conc"))
COLUMNS = [
    *((f"{side}_p{q}", f"{short} p{q}", 3) for side, short in SIDES for q in (50, 95, 99)),
    ("idle_mib_per_sandbox", "idle MiB", 1),
    ("idle_pss_mib_per_sandbox", "PSS MiB", 1),
]


def report(ours: dict[str, Any], bare: dict[str, Any], count: int) -> str:
    lines = [
        f"create -> envd healthy (s; p50 = median), {count} sandboxes each; idle memory per"
        " sandbox (MiB: MemAvailable drop, PSS of runsc processes)",
        f"{'':12}" + "".join(f"{title:>10}" for _, title, _ in COLUMNS),
    ]
    for row in (ours, bare):
        lines.append(f"{row['name']:12}" + "".join(f"{row[k]:10.{d}f}" for k, _, d in COLUMNS))
    ratios = (ours[k] / bare[k] if bare[k] else float("nan") for k, _, _ in COLUMNS)
    lines.append(f"{'ratio':12}" + "".join(f"{r:10.2f}" for r in ratios))
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before memory is read")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--quick", action="store_true", help="2 sandboxes each: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.count, args.settle = 2, 1.0
    require_root()
    directory = data_dir()
    ensure_base(directory)
    ours = await measure(Ours(directory), args.count, args.settle)
    bare_side = Bare(args.count, directory)
    bare = await measure(bare_side, args.count, args.settle)
    if args.json:
        print(json.dumps({"count": args.count, "ours": ours, "bare": bare}))
    else:
        print(f"runsc platform: {bare_side.platform}")
        print(report(ours, bare, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
