"""envd over loopback: command round trip, file throughput, cold start, idle memory.

Each number comes with a baseline measured in the same run (a bare ``subprocess.run``, a local
file copy), so a slow machine shows up as a slow baseline rather than as a regression.

    python benchmarks/envd_bench.py [--runs 300] [--size-mib 100] [--quick]

``--quick`` takes every path with a few runs and small files; any failure exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from e2b import Sandbox

from benchmarks._stats import BenchFailed, check, summary
from emberbox._proto.process import process_pb2 as pb
from emberbox.envd.users import fallback_user
from emberbox.host.ports import free_loopback_port
from emberbox.sdk._async.rpc import AsyncRpc

WARMUP = 20


def start_envd(port: int) -> tuple[subprocess.Popen[bytes], float]:
    """envd on ``port`` and the time until /health answered 204; fails if it never does."""
    with tempfile.TemporaryFile() as errors, httpx.Client() as http:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "emberbox.envd", "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if http.get(f"http://127.0.0.1:{port}/health", timeout=0.2).status_code == 204:
                    return process, time.perf_counter() - started
            except httpx.HTTPError:
                time.sleep(0.002)
        process.kill()
        process.wait()
        errors.seek(0)
        output = errors.read()[-3000:].decode(errors="replace")
        raise BenchFailed(f"envd on port {port} never became healthy:\n{output}")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_cold_start(runs: int) -> None:
    samples = []
    for _ in range(runs):
        process, elapsed = start_envd(free_loopback_port())
        samples.append(elapsed)
        process.terminate()
        process.wait()
    summary("envd cold start -> /health 204", samples)
    interpreter = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        interpreter.append(time.perf_counter() - t)
    base = summary("baseline: bare python3 -c pass", interpreter)
    ratio = statistics.median(samples) * 1000 / base["median"]
    print(f"{'':44} cold start / bare interpreter = {ratio:.2f}x")


async def start(rpc: AsyncRpc, cmd: str, *args: str) -> None:
    """One ``process.Process/Start`` to its end event; anything but exit 0 fails the run."""
    request = pb.StartRequest(process=pb.ProcessConfig(cmd=cmd, args=args), stdin=False)
    exit_code: int | None = None
    async for message in rpc.server_stream("process.Process/Start", request, pb.StartResponse):
        if message.event.WhichOneof("event") == "end":
            exit_code = message.event.end.exit_code
    check(exit_code == 0, f"{cmd} {' '.join(args)} through envd: exit {exit_code}")


async def timed_starts(url: str, runs: int, cmd: str, *args: str) -> list[float]:
    async with httpx.AsyncClient() as http:
        rpc = AsyncRpc(http, url, {})
        for _ in range(WARMUP):
            await start(rpc, cmd, *args)
        samples = []
        for _ in range(runs):
            t = time.perf_counter()
            await start(rpc, cmd, *args)
            samples.append(time.perf_counter() - t)
    return samples


def bench_round_trip(url: str, runs: int) -> None:
    ours = summary(
        'envd Start "bash -l -c true" round trip',
        asyncio.run(timed_starts(url, runs, "/bin/bash", "-l", "-c", "true")),
    )
    bare, login = [], []
    name = fallback_user()
    entry = pwd.getpwnam(name)
    as_user: dict[str, object] = {
        "cwd": "/",
        "env": {"HOME": entry.pw_dir, "USER": name, "PATH": os.environ["PATH"]},
        **({} if name == "root" else {"user": name}),
    }
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(["true"], check=True)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(["/bin/bash", "-l", "-c", "true"], check=True, **as_user)  # type: ignore[call-overload]
        login.append(time.perf_counter() - t)
    direct = summary(
        'envd Start "/bin/true" (no shell) round trip',
        asyncio.run(timed_starts(url, runs, "/bin/true")),
    )
    b = summary('baseline: subprocess.run(["true"])', bare)
    lb = summary(f"baseline: bash -l -c true as {name!r}", login)
    print(
        f"{'':44} /bin/true via envd / bare true = {direct['median'] / b['median']:.2f}x;"
        f" bash -l -c true via envd / bare = {ours['median'] / lb['median']:.2f}x"
    )


def bench_sdk_round_trip(runs: int) -> None:
    """The official SDK in debug mode needs envd on localhost:49983."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 49983)) == 0:
            print("port 49983 is busy: skipping the official-SDK round trip")
            return
    process, _ = start_envd(49983)
    try:
        os.environ["E2B_DEBUG"] = "true"
        sandbox = Sandbox.create()
        for _ in range(WARMUP):
            sandbox.commands.run("true")
        samples = []
        for _ in range(runs):
            t = time.perf_counter()
            sandbox.commands.run("true")
            samples.append(time.perf_counter() - t)
        summary('official e2b SDK commands.run("true")', samples)
    finally:
        process.terminate()
        process.wait()


async def bench_transfer(url: str, size_mib: int) -> None:
    size = size_mib * 1024 * 1024
    block = os.urandom(1024 * 1024)
    tmp = tempfile.mkdtemp(prefix="envd-bench-")
    # envd writes with the permissions of its default user, so that user owns the directory.
    entry = pwd.getpwnam(fallback_user())
    if os.geteuid() == 0:
        os.chown(tmp, entry.pw_uid, entry.pw_gid)
    target = os.path.join(tmp, "upload.bin")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size_mib):
            yield block

    async with httpx.AsyncClient(timeout=120) as http:
        t = time.perf_counter()
        response = await http.post(
            f"{url}/files",
            params={"path": target},
            content=body(),
            headers={"Content-Type": "application/octet-stream"},
        )
        up = time.perf_counter() - t
        check(response.status_code == 200, f"upload: {response.status_code} {response.text}")
        t = time.perf_counter()
        response = await http.post(
            f"{url}/files", files={"file": (target + ".mp", block * size_mib)}
        )
        mp = time.perf_counter() - t
        check(response.status_code == 200, f"multipart: {response.status_code} {response.text}")
        t = time.perf_counter()
        received = 0
        async with http.stream("GET", f"{url}/files", params={"path": target}) as stream:
            check(stream.status_code == 200, f"download: {stream.status_code}")
            async for chunk in stream.aiter_raw(1024 * 1024):
                received += len(chunk)
        down = time.perf_counter() - t
    check(received == size, f"downloaded {received} of {size} bytes")
    check(os.path.getsize(target + ".mp") == size, "multipart upload wrote the wrong size")
    t = time.perf_counter()
    shutil.copyfile(target, target + ".copy")
    copy = time.perf_counter() - t
    shutil.rmtree(tmp)
    mb = size / 1e6
    print(f"{'upload (octet-stream) ' + str(size_mib) + ' MiB':<44} {mb / up:8.0f} MB/s")
    print(f"{'upload (multipart) ' + str(size_mib) + ' MiB':<44} {mb / mp:8.0f} MB/s")
    print(f"{'download ' + str(size_mib) + ' MiB':<44} {mb / down:8.0f} MB/s")
    print(f"{'baseline: local file copy':<44} {mb / copy:8.0f} MB/s")
    print(f"{'':44} upload / copy = {copy / up:.2f}x; download / copy = {copy / down:.2f}x")


def main() -> None:
    global WARMUP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a few runs, 4 MiB: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.size_mib, args.starts, WARMUP = 20, 4, 2, 3
    print(f"host: {os.cpu_count()} cpus, python {sys.version.split()[0]}")
    bench_cold_start(args.starts)
    port = free_loopback_port()
    process, _ = start_envd(port)
    url = f"http://127.0.0.1:{port}"
    time.sleep(1.0)
    print(f"{'envd idle RSS after start':<44} {rss_mib(process.pid):8.1f} MiB")
    try:
        bench_round_trip(url, args.runs)
        time.sleep(1.0)
        print(f"{'envd RSS after the round trips':<44} {rss_mib(process.pid):8.1f} MiB")
        asyncio.run(bench_transfer(url, args.size_mib))
        print(f"{'envd RSS after the transfers':<44} {rss_mib(process.pid):8.1f} MiB")
    finally:
        process.terminate()
        process.wait()
    bench_sdk_round_trip(args.runs)


if __name__ == "__main__":
    main()
