"""The code interpreter over loopback: ``run_code("1+1")`` round trip through the official SDK.

The baseline, measured in the same run on a kernel of the same machine, is a bare
``jupyter_client`` execute (send, wait for idle): what is left over is the service's own cost
(HTTP, JSON lines, the context's bookkeeping). Also timed: the service's start until /health,
and a new context until its first result. Then, as root, the same through a real server with
``code-interpreter`` gVisor sandboxes (``_interpreter_sandbox.py``): create → first
``run_code`` result, and the round trip through the proxy, each next to its baseline.

    python benchmarks/interpreter_bench.py [--runs 300] [--creates 10] [--no-sandbox] [--quick]

``--quick`` takes every path with a few runs; any failure exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from e2b_code_interpreter import Sandbox
from jupyter_client.manager import KernelManager

from benchmarks._stats import BenchFailed, check, summary
from emberbox.host.ports import free_loopback_port

WARMUP = 10


def start_service(port: int, cwd: str) -> tuple[subprocess.Popen[bytes], float]:
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "emberbox.interpreter", "--host", "127.0.0.1"),
            *("--port", str(port), "--cwd", cwd),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        check(process.poll() is None, "the interpreter exited before serving")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    process.kill()
    raise BenchFailed("the interpreter did not answer /health")


def bare_kernel(runs: int) -> list[float]:
    """``1+1`` on a kernel driven directly by jupyter_client: the floor for the service."""
    runtime = tempfile.mkdtemp(prefix="emberbox-bench-kernel-")
    # Same transport as the service's kernels (IPC sockets), so only the service differs.
    manager = KernelManager(kernel_name="python3", transport="ipc", ip=f"{runtime}/kernel")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    try:
        samples = []
        for i in range(WARMUP + runs):
            t = time.perf_counter()
            reply = client.execute_interactive("1+1", timeout=30, output_hook=lambda _m: None)
            if i >= WARMUP:
                samples.append(time.perf_counter() - t)
            check(reply["content"]["status"] == "ok", f"bare execute failed: {reply['content']}")
        return samples
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
        shutil.rmtree(runtime, ignore_errors=True)


def through_sdk(sandbox: Sandbox, runs: int) -> list[float]:
    samples = []
    for i in range(WARMUP + runs):
        t = time.perf_counter()
        execution = sandbox.run_code("1+1")
        if i >= WARMUP:
            samples.append(time.perf_counter() - t)
        check(execution.text == "2", f"run_code('1+1') gave {execution!r}")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--creates", type=int, default=10, help="sandbox creates to time")
    parser.add_argument("--no-sandbox", action="store_true", help="skip the gVisor part")
    parser.add_argument("--quick", action="store_true", help="a few runs of every path")
    args = parser.parse_args()
    runs = 20 if args.quick else args.runs
    creates = 2 if args.quick else args.creates

    port = free_loopback_port()
    with tempfile.TemporaryDirectory(prefix="emberbox-interp-bench-") as cwd:
        process, startup = start_service(port, cwd)
        try:
            os.environ["E2B_DEBUG"] = "true"
            os.environ["E2B_SANDBOX_URL"] = f"http://127.0.0.1:{port}"
            sandbox = Sandbox.create()
            print(f"{'service start → /health':<44} {startup * 1000:8.1f}ms")
            t = time.perf_counter()
            context = sandbox.create_code_context()
            check(sandbox.run_code("1+1", context=context).text == "2", "new context failed")
            print(f"{'new context → first result':<44} {(time.perf_counter() - t) * 1000:8.1f}ms")
            sandbox.remove_code_context(context)

            baseline = summary("bare jupyter_client execute (baseline)", bare_kernel(runs))
            sdk = summary('SDK run_code("1+1") via the service', through_sdk(sandbox, runs))
            ratios = {key: sdk[key] / baseline[key] for key in ("median", "p95", "p99")}
            print(
                f"{'ratio service / baseline':<44} p50={ratios['median']:.2f}x"
                f"  p95={ratios['p95']:.2f}x  p99={ratios['p99']:.2f}x"
            )
        finally:
            process.terminate()
            process.wait(15)
    os.environ.pop("E2B_DEBUG", None)
    os.environ.pop("E2B_SANDBOX_URL", None)
    if not args.no_sandbox:
        from benchmarks import _interpreter_sandbox

        _interpreter_sandbox.run(creates, runs)


if __name__ == "__main__":
    try:
        main()
    except BenchFailed as exc:
        print(f"interpreter_bench: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
