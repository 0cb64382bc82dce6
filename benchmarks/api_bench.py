"""Time to interactive through the control plane, with the official ``e2b`` SDK.

Starts a real ``emberbox server`` (own SQLite database), then measures ``Sandbox.create()`` →
first ``commands.run`` result for N sequential and N concurrent creates, next to a bare create
measured in the same run without API or SDK: for ``--backend local`` an envd process started by
hand until /health answers 204, for ``--backend gvisor`` ``GVisorRuntime.create`` plus the envd
handshake (healthy, /init) as the node does it. Prints median/p95/p99 in milliseconds and the
ratio of each TTI to the bare create.

    .venv/bin/python benchmarks/api_bench.py [--n 20] [--backend local|gvisor] [--quick]

``--backend gvisor`` needs root and runsc; it runs in the benchmarks' own data dir (see
``_host.py``). ``--quick`` does 2 of each, to prove every step still works.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
from e2b import Sandbox

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._host import boot, data_dir, gvisor_server
from benchmarks._stats import check, summary
from benchmarks.envd_bench import start_envd
from emberbox.host.ports import free_loopback_port
from emberbox.server.testing import ServerProcess

READERS = 16  # concurrent clients reading one sandbox
LIMITS = {
    "EMBERBOX_CPU_OVERCOMMIT": "100",
    "EMBERBOX_MEMORY_OVERCOMMIT": "4",
    "EMBERBOX_RATE_PER_S": "1000",
    "EMBERBOX_RATE_BURST": "1000",
}


def tti_once(env: dict[str, str]) -> float:
    start = time.perf_counter()
    sbx = Sandbox.create(
        timeout=120,
        api_key=env["E2B_API_KEY"],
        api_url=env["E2B_API_URL"],
        sandbox_url=env["E2B_SANDBOX_URL"],
    )
    try:
        result = sbx.commands.run("true")
        elapsed = time.perf_counter() - start
        check(result.exit_code == 0, f"commands.run('true') exited {result.exit_code}")
    finally:
        killed = sbx.kill()
    check(killed is True, f"kill of {sbx.sandbox_id} answered {killed!r}")
    return elapsed


Samples = list[float]


def reads(env: dict[str, str], n: int, clients: int) -> tuple[Samples, Samples, Samples]:
    """A sandbox read (``Sandbox.get_info``: ``GET /sandboxes/{id}``, authenticated, from the
    database) from one client and from ``clients`` at once, and the server's ``/health`` (no
    key, no database) from one client: the API's own cost per request."""
    key, url = env["E2B_API_KEY"], env["E2B_API_URL"]
    sbx = Sandbox.create(timeout=120, api_key=key, api_url=url, sandbox_url=env["E2B_SANDBOX_URL"])
    try:

        def read() -> float:
            start = time.perf_counter()
            info = Sandbox.get_info(sbx.sandbox_id, api_key=key, api_url=url)
            check(info.sandbox_id == sbx.sandbox_id, f"get_info answered {info.sandbox_id}")
            return time.perf_counter() - start

        with httpx.Client(base_url=env["E2B_API_URL"]) as http:

            def health() -> float:
                start = time.perf_counter()
                check(http.get("/health").is_success, "/health did not answer")
                return time.perf_counter() - start

            for _ in range(5):  # warm-up: connections, caches
                read(), health()
            alone = [read() for _ in range(n)]
            bare = [health() for _ in range(n)]
        together = concurrent(lambda: sum(read() for _ in range(n)) / n, clients)
    finally:
        sbx.kill()
    return alone, together, bare


def concurrent(fn: Callable[[], float], n: int) -> list[float]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: fn(), range(n)))


def bare_envd_starts(n: int) -> list[float]:
    """What the local backend cannot avoid: one envd process, up until /health answers."""
    times = []
    for _ in range(n):
        process, elapsed = start_envd(free_loopback_port())
        times.append(elapsed)
        process.terminate()
        process.wait()
    return times


async def bare_runtime_creates(n: int) -> list[float]:
    """The gVisor runtime's create and the envd handshake (healthy, /init), no node or API."""
    from emberbox.runtimes.base import SandboxSpec
    from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime

    runtime = GVisorRuntime(GVisorConfig(data_dir=data_dir()))
    times = []
    for _ in range(n):
        spec = SandboxSpec(sandbox_id=f"bench{secrets.token_hex(4)}", template_id="base")
        start = time.perf_counter()
        try:
            await boot(runtime, spec)
            times.append(time.perf_counter() - start)
        finally:
            await runtime.kill(spec.sandbox_id)
    return times


def cli_commands(server: ServerProcess, n: int) -> tuple[Samples, Samples]:
    """``emberbox keys list`` as shipped, and the same command run without ``main()``'s
    frozen exit (``emberbox.long_lived``): the collections at exit walk all it imported."""
    env = {**os.environ, **server.env()}
    shipped = [sys.executable, "-m", "emberbox.cli", "keys", "list"]
    walked = [sys.executable, "-c", "from emberbox.cli.app import app; app()", "keys", "list"]

    def once(argv: list[str]) -> float:
        t0 = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, timeout=60)
        check(done.returncode == 0, f"{argv[-2:]} failed: {done.stderr[-500:]!r}")
        return time.perf_counter() - t0

    pairs = [(once(shipped), once(walked)) for _ in range(n)]  # interleaved: drift hits both
    return [a for a, _ in pairs], [b for _, b in pairs]


@contextmanager
def server(backend: str, tmp: Path, n: int) -> Iterator[ServerProcess]:
    env = {**LIMITS, "EMBERBOX_MAX_SANDBOXES_PER_TEAM": str(n + 5)}
    if backend == "gvisor":
        with gvisor_server(tmp, env) as started:
            yield started
        return
    local = ServerProcess(
        tmp / "server",
        database_url=f"sqlite+aiosqlite:///{tmp}/bench.db",
        env={**env, "EMBERBOX_BACKEND": "local"},
        log_dir=tmp,
    )
    local.start(timeout_s=60)
    try:
        yield local
    finally:
        local.stop()
        local.kill_sandboxes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--backend", default="local", choices=["local", "gvisor"])
    parser.add_argument("--quick", action="store_true", help="2 of each: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.n = 2

    with tempfile.TemporaryDirectory(prefix="emberbox-bench-") as tmp:
        with server(args.backend, Path(tmp), args.n) as started:
            assert started.first_key
            sdk_env = started.sdk_env(started.first_key)
            tti_once(sdk_env)  # warm-up: imports, connection pools, page cache
            seq = [tti_once(sdk_env) for _ in range(args.n)]
            par = concurrent(lambda: tti_once(sdk_env), args.n)
            read_alone, read_together, health = reads(sdk_env, args.n * 5, READERS)
            commands = cli_commands(started, args.n) if args.backend == "local" else None
        if args.backend == "gvisor":
            bare_name = "runtime create + handshake"
            bare = asyncio.run(bare_runtime_creates(args.n))
        else:
            bare_name = "envd start -> /health"
            bare = bare_envd_starts(args.n)

    print(f"backend: {args.backend}   (TTI = Sandbox.create() -> first commands.run result)")
    rows = {
        "sequential": summary(f"TTI, {args.n} sequential (e2b SDK)", seq),
        "concurrent": summary(f"TTI, {args.n} concurrent (e2b SDK)", par),
    }
    base = summary(f"baseline: {bare_name}, seq", bare)
    for name, row in rows.items():
        print(
            f"{'':44} TTI {name} / bare: median {row['median'] / base['median']:.2f}x,"
            f" p99 {row['p99'] / base['p99']:.2f}x"
        )
    alone = summary("get_info, 1 client (GET /sandboxes/{id})", read_alone)
    summary(f"get_info, {READERS} clients, each one's mean", read_together)
    floor = summary("baseline: GET /health, 1 client", health)
    print(f"{'':44} get_info / health: median {alone['median'] / floor['median']:.2f}x")
    if commands is not None:
        shipped = summary("emberbox keys list (a CLI command)", commands[0])
        walked = summary("baseline: the same, exit collections walking all", commands[1])
        print(f"{'':44} CLI command / baseline: median {shipped['median'] / walked['median']:.2f}x")


if __name__ == "__main__":
    main()
