"""Time to interactive through the control plane, with the official ``e2b`` SDK.

Starts a real ``emberbox server`` (own data dir, SQLite), then measures ``Sandbox.create()`` → first
``commands.run`` result for N sequential and N concurrent creates, next to the backend's bare create
time (no API, no SDK) measured in the same run. Prints p50/p95/p99 in milliseconds.

    .venv/bin/python benchmarks/api_bench.py [--n 20] [--backend local|gvisor]

``--backend gvisor`` needs root, runsc and a built ``base`` template in ``$EMBERBOX_DATA_DIR``
(default /var/lib/emberbox); like every orchestrator it must be the only one on the host.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e2b import Sandbox

from emberbox.server.backends.base import BackendSpec, SandboxBackend
from emberbox.server.config import Settings
from emberbox.server.context import make_backend
from emberbox.server.lifecycle.service import new_sandbox_id
from emberbox.server.testing import ServerProcess


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def row(name: str, samples_s: list[float]) -> str:
    ms = [s * 1000 for s in samples_s]
    return (
        f"{name:<34} n={len(ms):<3} p50={pct(ms, 50):8.1f}  p95={pct(ms, 95):8.1f}  "
        f"p99={pct(ms, 99):8.1f}  mean={statistics.fmean(ms):8.1f}"
    )


def tti_once(env: dict[str, str]) -> float:
    start = time.perf_counter()
    sbx = Sandbox.create(
        timeout=120,
        api_key=env["E2B_API_KEY"],
        api_url=env["E2B_API_URL"],
        sandbox_url=env["E2B_SANDBOX_URL"],
    )
    result = sbx.commands.run("true")
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0
    sbx.kill()
    return elapsed


def concurrent(fn: Callable[[], float], n: int) -> list[float]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: fn(), range(n)))


async def bare_backend_creates(backend: SandboxBackend, n: int) -> list[float]:
    """The dev backend's own create (spawn envd, wait for health, /init), no API or SDK."""
    await backend.start()
    times = []
    try:
        for _ in range(n):
            spec = BackendSpec(
                sandbox_id=new_sandbox_id(),
                template_id="base",
                cpu_count=2,
                memory_mb=512,
                disk_mb=1024,
            )
            start = time.perf_counter()
            await backend.create(spec)
            times.append(time.perf_counter() - start)
            await backend.kill(spec.sandbox_id)
    finally:
        await backend.close()
    return times


async def bare_runtime_creates(runtime_name: str, n: int) -> list[float]:
    """The isolating runtime's own create (boot + envd healthy), without orchestrator or API."""
    from emberbox.runtimes import select_runtime
    from emberbox.runtimes.base import SandboxSpec

    runtime = select_runtime(runtime_name)
    times = []
    for _ in range(n):
        spec = SandboxSpec(sandbox_id=new_sandbox_id(), template_id="base")
        start = time.perf_counter()
        await runtime.create(spec)
        times.append(time.perf_counter() - start)
        await runtime.kill(spec.sandbox_id)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--backend", default="local", choices=["local", "gvisor"])
    args = parser.parse_args()

    isolated = args.backend != "local"
    with tempfile.TemporaryDirectory(prefix="emberbox-bench-") as tmp:
        env = {
            "EMBERBOX_BACKEND": args.backend,
            "EMBERBOX_CPU_OVERCOMMIT": "100",
            "EMBERBOX_MEMORY_OVERCOMMIT": "4",
            "EMBERBOX_MAX_SANDBOXES_PER_TEAM": str(args.n + 5),
            "EMBERBOX_RATE_PER_S": "1000",
            "EMBERBOX_RATE_BURST": "1000",
        }
        # An isolating backend boots templates from the store in the real data directory.
        data_dir = Path(os.environ.get("EMBERBOX_DATA_DIR", "/var/lib/emberbox"))
        server = ServerProcess(
            data_dir if isolated else Path(tmp) / "server",
            database_url=f"sqlite+aiosqlite:///{tmp}/bench.db",
            env=env,
            log_dir=Path(tmp),
        )
        server.start(timeout_s=60)
        try:
            assert server.first_key
            sdk_env = server.sdk_env(server.first_key)
            tti_once(sdk_env)  # warm-up: imports, connection pools, page cache
            seq = [tti_once(sdk_env) for _ in range(args.n)]
            par = concurrent(lambda: tti_once(sdk_env), args.n)
        finally:
            server.stop()
            if not isolated:
                server.kill_sandboxes()
        if isolated:
            bare_name = "bare runtime create"
            bare = asyncio.run(bare_runtime_creates(args.backend, args.n))
        else:
            bare_name = "bare backend create"
            settings = Settings.from_env({**env, "EMBERBOX_DATA_DIR": f"{tmp}/bare"})
            bare = asyncio.run(bare_backend_creates(make_backend(settings), args.n))

    print(f"backend: {args.backend}   (times in ms; TTI = create → first commands.run result)")
    print(row(f"TTI, {args.n} sequential (SDK)", seq))
    print(row(f"TTI, {args.n} concurrent (SDK)", par))
    print(row(f"{bare_name}, {args.n} sequential", bare))


if __name__ == "__main__":
    main()
