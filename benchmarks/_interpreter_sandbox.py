"""The code interpreter as users get it: a ``code-interpreter`` gVisor sandbox through a real
server and its proxy, driven by the official ``e2b_code_interpreter`` SDK.

Measured: ``Sandbox.create()`` → first ``run_code("1+1")`` result (baseline in the same run:
``base`` create → first ``commands.run`` result, i.e. what the interpreter adds to a create),
and the ``run_code("1+1")`` round trip through the proxy (baseline: ``GET /health`` of the same
service through the same proxy, i.e. the network and proxy floor). Part of
``interpreter_bench.py``; needs root and runsc, and runs in the benchmarks' data dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from e2b import Sandbox as BaseSandbox
from e2b_code_interpreter import Sandbox

from benchmarks._host import data_dir, gvisor_server
from benchmarks._stats import check, summary
from emberbox.server.testing import ServerProcess

WARMUP = 10


def ensure_template(directory: Path) -> None:
    cache = os.environ.get("EMBERBOX_TEMPLATE_CACHE") or "/var/cache/emberbox/templates"
    argv = [sys.executable, "-m", "emberbox.templates", "--data-dir", str(directory)]
    done = subprocess.run(
        [*argv, "build-code-interpreter", "--cache-dir", cache], capture_output=True, text=True
    )
    check(done.returncode == 0, f"building code-interpreter failed:\n{done.stderr[-3000:]}")


def _create(cls: type[BaseSandbox], server: ServerProcess, template: str | None = None) -> Any:
    assert server.first_key
    return cls.create(
        template=template,
        timeout=300,
        api_key=server.first_key,
        api_url=server.api_url,
        sandbox_url=server.sandbox_url,
    )


def create_to_first_result(server: ServerProcess) -> float:
    started = time.perf_counter()
    sandbox = _create(Sandbox, server)
    try:
        execution = sandbox.run_code("1+1")
        elapsed = time.perf_counter() - started
        check(execution.text == "2", f"first run_code('1+1') gave {execution!r}")
    finally:
        sandbox.kill()
    return elapsed


def base_create_to_first_command(server: ServerProcess) -> float:
    started = time.perf_counter()
    sandbox = _create(BaseSandbox, server, template="base")
    try:
        result = sandbox.commands.run("true")
        elapsed = time.perf_counter() - started
        check(result.exit_code == 0, "commands.run('true') failed")
    finally:
        sandbox.kill()
    return elapsed


def round_trips(server: ServerProcess, runs: int) -> tuple[list[float], list[float]]:
    sandbox = _create(Sandbox, server)
    route = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49999"}
    health: list[float] = []
    code: list[float] = []
    try:
        with httpx.Client(base_url=server.sandbox_url, headers=route, trust_env=False) as http:
            for i in range(WARMUP + runs):
                t = time.perf_counter()
                check(http.get("/health").status_code == 200, "/health through the proxy")
                if i >= WARMUP:
                    health.append(time.perf_counter() - t)
        for i in range(WARMUP + runs):
            t = time.perf_counter()
            execution = sandbox.run_code("1+1")
            if i >= WARMUP:
                code.append(time.perf_counter() - t)
            check(execution.text == "2", f"run_code('1+1') gave {execution!r}")
    finally:
        sandbox.kill()
    return health, code


def run(creates: int, runs: int) -> None:
    if os.geteuid() != 0:
        print("code-interpreter sandboxes: skipped (gVisor needs root)")
        return
    ensure_template(data_dir())
    with (
        tempfile.TemporaryDirectory(prefix="emberbox-interp-bench-") as tmp,
        gvisor_server(Path(tmp)) as server,
    ):
        create_to_first_result(server)  # warm-up: page cache, pools
        first = [create_to_first_result(server) for _ in range(creates)]
        base = [base_create_to_first_command(server) for _ in range(creates)]
        health, code = round_trips(server, runs)
    print("code-interpreter sandbox (gVisor) through the server and its proxy:")
    new = summary("create → first run_code('1+1') result", first)
    floor = summary("baseline: base create → first commands.run", base)
    print(f"{'ratio code-interpreter / base':<44} p50={new['median'] / floor['median']:.2f}x")
    proxied = summary('run_code("1+1") via the proxy', code)
    reach = summary("baseline: GET /health via the proxy", health)
    print(
        f"{'run_code minus the proxy floor (p50)':<44} {proxied['median'] - reach['median']:.2f}ms"
    )
