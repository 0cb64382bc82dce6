"""What the benchmarks that boot real gVisor sandboxes share.

They use a data dir of their own (``$EMBERBOX_BENCH_DATA_DIR``, default
/var/lib/emberbox-bench), so a benchmark's orchestrator never takes a test run's sandboxes for
orphans, nor the other way round. The ``base`` template is built there through the template
CLI, from the layer cache that ``scripts/setup`` and ``scripts/test`` fill
(``$EMBERBOX_TEMPLATE_CACHE``), which takes a few seconds once the cache is warm.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from benchmarks._stats import check
from emberbox.envd_client.handshake import handshake
from emberbox.runtimes.base import RuntimeSandbox, SandboxSpec
from emberbox.runtimes.gvisor import GVisorRuntime
from emberbox.server.testing import NodeProcess, ServerProcess


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("gVisor sandboxes need root (netns, mounts, cgroups)")


# The kernel's free page reporting (virtio-balloon): free blocks of this order and up go back to
# the hypervisor, and a later first touch of them faults there too.
PAGE_REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")


def memory_fill_ms(mib: int = 256, n: int = 3) -> tuple[float, float]:
    """Median ms to fill ``mib`` MiB of fresh shared memory (a memfd, as gVisor's memory file),
    and to fill the same pages again. A restore fills the sandbox's memory so: the difference
    is what page faults, allocation and zeroing cost on this host: a floor under every
    restore that no runsc flag moves."""
    size = mib << 20
    data = b"x" * size
    first: list[float] = []
    again: list[float] = []
    for _ in range(n):
        fd = os.memfd_create("emberbox-bench-fill", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            with mmap.mmap(fd, size) as memory:
                for out in (first, again):
                    memory.seek(0)
                    start = time.perf_counter()
                    memory.write(data)
                    out.append((time.perf_counter() - start) * 1000)
        finally:
            os.close(fd)
    return statistics.median(first), statistics.median(again)


def free_page_reporting() -> str:
    """Whether this kernel hands free memory back to a hypervisor, and from which block size."""
    try:
        order = int(PAGE_REPORTING_ORDER.read_text())
    except (OSError, ValueError):
        return "off"
    return f"on, blocks of {4 << order} KiB and up" if order >= 0 else "off"


def data_dir() -> Path:
    return Path(os.environ.get("EMBERBOX_BENCH_DATA_DIR") or "/var/lib/emberbox-bench")


def ensure_base(directory: Path) -> None:
    """Build (or reuse) ``base`` in ``directory``, then drop layers no template uses."""
    cache = os.environ.get("EMBERBOX_TEMPLATE_CACHE") or "/var/cache/emberbox/templates"
    cli = [sys.executable, "-m", "emberbox.templates", "--data-dir", str(directory)]
    for argv in ([*cli, "build-base", "--cache-dir", cache], [*cli, "gc"]):
        done = subprocess.run(argv, capture_output=True, text=True)
        check(done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")


async def boot(runtime: GVisorRuntime, spec: SandboxSpec) -> RuntimeSandbox:
    """A sandbox in service, as the node makes one: the runtime starts the machine, then the
    envd handshake (/health answers 204, one POST /init)."""
    sandbox = await runtime.create(spec)
    async with httpx.AsyncClient(trust_env=False) as http:
        await handshake(
            http, sandbox.envd_url, sandbox.defaults, "", timeout_s=60,
            alive=lambda: runtime.alive(spec.sandbox_id),
        )  # fmt: skip
    return sandbox


@contextlib.contextmanager
def gvisor_server(tmp: Path, env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    """A real ``emberbox server`` on gVisor over the bench data dir, with a fresh database.

    Sandboxes still alive when the block ends are the caller's to kill (the server leaves them
    running when it stops, as in production).
    """
    require_root()
    directory = data_dir()
    ensure_base(directory)
    server = ServerProcess(
        directory,
        database_url=f"sqlite+aiosqlite:///{tmp / 'bench.db'}",
        # EMBERBOX_RUNTIME is the current name; EMBERBOX_BACKEND the one ServerProcess sets.
        env={"EMBERBOX_RUNTIME": "gvisor", "EMBERBOX_BACKEND": "gvisor", **(env or {})},
        log_dir=tmp,
    )
    server.start(timeout_s=60)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def remote_node_server(tmp: Path, env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    """``emberbox node`` on gVisor over the bench data dir, and a server with a data dir of its
    own pointed at it (every node call then crosses HTTP as JSON). Stop any server using the
    bench data dir first: one node per data dir."""
    require_root()
    ensure_base(data_dir())
    node = NodeProcess(data_dir(), "gvisor", env)
    reach = {"EMBERBOX_NODE_URL": node.url, "EMBERBOX_NODE_TOKEN": node.token}
    server = ServerProcess(tmp / "remote-server", log_dir=tmp, env={**(env or {}), **reach})
    try:
        node.start()
        server.start(timeout_s=60)
        yield server
    finally:
        server.stop()
        node.stop()
