"""Restore -> envd healthy: Emberbox's Firecracker runtime vs a bare Firecracker snapshot load.

    sudo .venv/bin/python benchmarks/firecracker_bench.py [--count 10] [--json] [--quick]

"Ours" is ``FirecrackerRuntime.create`` of ``base`` plus the node's envd handshake: address
lease, netns + veth + nft, tap + NAT in the netns, a copy of the snapshot's writable disk,
firecracker spawned in the netns, ``PUT /snapshot/load`` (memory file mapped MAP_PRIVATE), then
envd's /health polled (the first connection after a load may be reset) and one POST /init.
"Bare" loads the same snapshot files in a netns with a tap made beforehand, from spawn until
``PUT /snapshot/load`` with ``resume_vm`` returns: the floor a restore can reach. It writes its
own Firecracker command line and API calls and uses none of the runtime's modules. Host
memory per clone is the PSS of our firecracker processes with every clone alive.

The template snapshot (one cold boot: minutes on a PVM host) is taken first if the cache has
none. ``--quick`` restores two of each, to prove every step still works (about 5 min on a PVM
host, where a restored envd takes about 2 min to answer).
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

from benchmarks._host import data_dir, ensure_base, require_root
from benchmarks._stats import BenchFailed, check, percentile
from emberbox.envd_client.handshake import handshake
from emberbox.runtimes.base import SandboxSpec
from emberbox.runtimes.firecracker import (
    FirecrackerConfig,
    FirecrackerRuntime,
    KvmUnavailable,
    artifacts,
)
from emberbox.templates.store import TemplateStore


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class Ours:
    def __init__(self, runtime: FirecrackerRuntime) -> None:
        self.runtime = runtime
        self.ids: list[str] = []

    async def create(self) -> float:
        sandbox_id = f"fcb{secrets.token_hex(4)}"
        self.ids.append(sandbox_id)
        t0 = time.perf_counter()
        sandbox = await self.runtime.create(SandboxSpec(sandbox_id=sandbox_id, template_id="base"))
        async with httpx.AsyncClient(trust_env=False) as http:
            await handshake(http, sandbox.envd_url, sandbox.defaults, "", timeout_s=600)
        return time.perf_counter() - t0

    def pids(self) -> list[int]:
        out = []
        for sandbox_id in self.ids:
            state = self.runtime.config.sandboxes_dir / sandbox_id / "state.json"
            pid = json.loads(state.read_text()).get("pid") if state.exists() else None
            if pid:
                out.append(int(pid))
        return out

    async def destroy_all(self) -> None:
        await asyncio.gather(*(self.runtime.kill(i) for i in self.ids))
        self.ids.clear()


class Bare:
    """Plain Firecracker: a netns with a tap named as in the snapshot, the drives beside the
    API socket (the snapshot names them by relative path), one load call."""

    def __init__(self, snapshot: Path, firecracker: Path, work: Path) -> None:
        self.snapshot, self.firecracker, self.work = snapshot, firecracker, work
        self.procs: list[tuple[str, asyncio.subprocess.Process]] = []

    def _prepare(self, name: str) -> Path:
        vm = self.work / name
        vm.mkdir()
        meta = json.loads((self.snapshot / "snapshot.json").read_text())
        (vm / "rootfs.ext4").symlink_to(meta["image"])
        for argv in (
            ["cp", "--sparse=always", str(self.snapshot / "disk.ext4"), str(vm)],
            ["ip", "netns", "add", name],
            ["ip", "-n", name, "tuntap", "add", "dev", "tap0", "mode", "tap"],
            ["ip", "-n", name, "link", "set", "tap0", "up"],
        ):
            subprocess.run(argv, check=True)
        return vm

    async def create(self) -> float:
        name = f"ebfcbench{len(self.procs)}"
        vm = await asyncio.to_thread(self._prepare, name)
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", name, str(self.firecracker), "--api-sock", "api.sock",
            cwd=vm, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.procs.append((name, proc))
        transport = httpx.AsyncHTTPTransport(uds=str(vm / "api.sock"))
        async with httpx.AsyncClient(transport=transport, base_url="http://fc") as api:
            while True:
                try:
                    await api.get("/")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.002)
            body = {
                "snapshot_path": str(self.snapshot / "vm.snap"),
                "mem_backend": {"backend_type": "File",
                                "backend_path": str(self.snapshot / "vm.mem")},
                "resume_vm": True,
            }  # fmt: skip
            response = await api.put("/snapshot/load", json=body)
            check(response.status_code == 204, f"bare load: {response.text}")
        return time.perf_counter() - t0

    async def destroy_all(self) -> None:
        for name, proc in self.procs:
            proc.kill()
            await proc.wait()
            await asyncio.to_thread(subprocess.run, ["ip", "netns", "delete", name], check=False)
        self.procs.clear()


def row(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(samples, 50) * 1000,
        "p95_ms": percentile(samples, 95) * 1000,
        "p99_ms": percentile(samples, 99) * 1000,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--quick", action="store_true", help="2 restores each: a smoke run")
    parser.add_argument(
        "--no-build", action="store_true", help="use the data dir's base as it is, no rebuild"
    )
    args = parser.parse_args()
    require_root()
    count = 2 if args.quick else args.count
    directory = data_dir()
    # A restored envd takes minutes to answer on a PVM host (docs/runtimes.md).
    config = FirecrackerConfig(data_dir=directory, restore_timeout=600.0)
    runtime = FirecrackerRuntime(config, TemplateStore(directory))
    try:
        firecracker, _kernel, pvm = runtime.host()
    except KvmUnavailable as exc:  # a host fact, not a failure of what this drives
        print(f"firecracker_bench: skipped: {exc}")
        return 0
    if not args.no_build:
        ensure_base(directory)
    await runtime.cleanup_orphans([])
    t0 = time.perf_counter()
    snapshot = await runtime.ensure_snapshot(TemplateStore(directory).get("base"))
    snapshot_s = time.perf_counter() - t0

    ours, bare_samples, ours_samples = Ours(runtime), [], []
    with tempfile.TemporaryDirectory(prefix="fcbench-") as work:
        bare = Bare(snapshot, firecracker, Path(work))
        try:
            for _ in range(count):  # interleaved: both sides see the same host load
                ours_samples.append(await ours.create())
                bare_samples.append(await bare.create())
            pss = pss_bytes(ours.pids()) / max(1, len(ours.ids))
        finally:
            await ours.destroy_all()
            await bare.destroy_all()
            shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "count": count,
        "pvm_host": pvm,
        "firecracker": artifacts.FIRECRACKER_VERSION,
        "template_snapshot_s": round(snapshot_s, 1),
        "ours_restore_to_envd": row(ours_samples),
        "bare_snapshot_load": row(bare_samples),
        "ratio_p50": percentile(ours_samples, 50) / percentile(bare_samples, 50),
        "pss_per_clone_mib": pss / 2**20,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"Firecracker {artifacts.FIRECRACKER_VERSION}, {'PVM' if pvm else 'hardware'} KVM, "
          f"{count} restores each (template snapshot ready in {snapshot_s:.1f} s)")  # fmt: skip
    for name, key in (("ours: restore -> envd healthy + /init", "ours_restore_to_envd"),
                      ("bare: spawn -> snapshot loaded", "bare_snapshot_load")):  # fmt: skip
        r = result[key]
        print(f"{name:<40} p50={r['p50_ms']:8.1f}ms p95={r['p95_ms']:8.1f}ms "
              f"p99={r['p99_ms']:8.1f}ms")  # fmt: skip
    print(
        f"ratio ours/bare (p50): {result['ratio_p50']:.1f}x; "
        f"host memory (PSS) per clone: {result['pss_per_clone_mib']:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except BenchFailed as exc:
        sys.exit(f"firecracker_bench: {exc}")
