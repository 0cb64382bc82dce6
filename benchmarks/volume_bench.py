"""Volumes through the control plane with the official ``e2b`` SDK, each figure next to the
same work on the sandbox's own disk (or through envd) measured in the same run.

Measured (median/p95/p99, ratio to its baseline):
* inside a sandbox: write and read 64 MiB, create 500 small files — on the volume (gVisor's
  gofer to a host ext4) against the sandbox's own disk (gVisor's overlay, memory-mapped file);
* the content API: upload and download 16 MiB (``Volume.write_file`` / ``read_file``)
  against the same bytes through envd (``sandbox.files.write`` / ``read``);
* create → first command with a volume mounted (always a boot: no template snapshot holds
  the mount) against a create without one (restored from the template's snapshot);
* the content API through a remote node (``emberbox node``: every piece crosses HTTP as
  JSON) against the embedded node's figures.

    .venv/bin/python benchmarks/volume_bench.py [--n 10] [--quick]

Needs root and runsc; runs in the benchmarks' own data dir (``_host.py``). ``--quick`` does
2 of each to prove every path still works.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2b import Sandbox, Volume

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._host import (
    data_dir,
    ensure_base,
    gvisor_server,
    remote_node_server,
    require_root,
)
from benchmarks._stats import check, summary

BIG_MB = 64
UPLOAD = os.urandom(16 << 20)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def in_guest(sbx: Sandbox, command: str) -> float:
    """Seconds the command took inside the guest (its own clock: no RPC in the figure)."""
    out = sbx.commands.run(f"s=$(date +%s%N); {command}; e=$(date +%s%N); echo $((e - s))",
                           timeout=300)  # fmt: skip
    check(out.exit_code == 0, f"{command!r} failed: {out.stderr}")
    return int(out.stdout.strip().splitlines()[-1]) / 1e9


def guest_io(sbx: Sandbox, n: int) -> dict[str, tuple[list[float], list[float]]]:
    rows: dict[str, tuple[list[float], list[float]]] = {}
    pairs = {
        f"write {BIG_MB} MiB (fsync)": "dd if=/dev/zero of={d}/big bs=1M count="
        + str(BIG_MB)
        + " conv=fsync status=none",
        f"read {BIG_MB} MiB": "cat {d}/big > /dev/null",
        "create 500 small files": "mkdir -p {d}/s && for i in $(seq 500); do echo x > {d}/s/$i; "
        "done && rm -r {d}/s",
    }
    for name, template in pairs.items():
        volume, disk = [], []
        for _ in range(n):
            volume.append(in_guest(sbx, template.format(d="/v")))
            disk.append(in_guest(sbx, template.format(d="/home/user")))
        rows[name] = (volume, disk)
    return rows


def transfers(vol: Volume, n: int) -> tuple[list[float], list[float]]:
    """Upload and download of UPLOAD through the content API alone."""
    up, down = [], []
    got: dict[str, bytes | bytearray] = {}
    for _ in range(n):
        up.append(timed(lambda: vol.write_file("/upload", UPLOAD)))
        down.append(timed(lambda: got.update(v=vol.read_file("/upload", format="bytes"))))
        check(got["v"] == UPLOAD, "a transfer changed the bytes")
    return up, down


def content_api(vol: Volume, sbx: Sandbox, n: int) -> dict[str, tuple[list[float], list[float]]]:
    up, up_envd, down, down_envd = [], [], [], []
    got: dict[str, bytes | bytearray] = {}
    for _ in range(n):
        up.append(timed(lambda: vol.write_file("/upload", UPLOAD)))
        up_envd.append(timed(lambda: sbx.files.write("/home/user/upload", UPLOAD)))
        down.append(timed(lambda: got.update(v=vol.read_file("/upload", format="bytes"))))
        down_envd.append(
            timed(lambda: got.update(e=sbx.files.read("/home/user/upload", format="bytes")))
        )
        check(got["v"] == UPLOAD and got["e"] == UPLOAD, "a transfer changed the bytes")
    return {"upload 16 MiB": (up, up_envd), "download 16 MiB": (down, down_envd)}


def creates(n: int) -> tuple[list[float], list[float]]:
    def first_command(**extra: Any) -> float:
        start = time.perf_counter()
        sbx = Sandbox.create("base", timeout=300, **extra)
        check(sbx.commands.run("true").exit_code == 0, "first command failed")
        elapsed = time.perf_counter() - start
        sbx.kill()
        return elapsed

    first_command()  # the template's snapshot is taken after the first create
    time.sleep(5)
    with_volume = [first_command(volume_mounts={"/v": "bench"}) for _ in range(n)]
    without = [first_command() for _ in range(n)]
    return with_volume, without


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 of each, to prove it works")
    args = parser.parse_args()
    n = 2 if args.quick else args.n
    require_root()
    ensure_base(data_dir())
    env = {"EMBERBOX_RATE_PER_S": "1000", "EMBERBOX_RATE_BURST": "1000"}
    with tempfile.TemporaryDirectory() as tmp, gvisor_server(Path(tmp), env) as server:
        os.environ.update(server.sdk_env(server.first_key or ""))  # as a user points the SDK
        vol = Volume.create("bench")
        sbx = Sandbox.create("base", timeout=600, volume_mounts={"/v": vol})
        try:
            rows = guest_io(sbx, n) | content_api(vol, sbx, n)
        finally:
            sbx.kill()
        with_volume, without = creates(n)
        Volume.destroy(vol.volume_id)
    with tempfile.TemporaryDirectory() as tmp, remote_node_server(Path(tmp), env) as server:
        os.environ.update(server.sdk_env(server.first_key or ""))
        vol = Volume.create("bench-remote")
        remote_up, remote_down = transfers(vol, n)
        Volume.destroy(vol.volume_id)
    rows["upload 16 MiB, remote node"] = (remote_up, rows["upload 16 MiB"][0])
    rows["download 16 MiB, remote node"] = (remote_down, rows["download 16 MiB"][0])
    for name, (measured, baseline) in rows.items():
        row = summary(f"{name} (volume)", measured)
        base = summary(f"{name} (baseline)", baseline)
        print(f"{'':<44} ratio to its baseline: {row['median'] / base['median']:.2f}x")
    row = summary("create → first command, with a volume", with_volume)
    base = summary("create → first command, without (restored)", without)
    print(f"{'':<44} ratio to its baseline: {row['median'] / base['median']:.2f}x")


if __name__ == "__main__":
    main()
