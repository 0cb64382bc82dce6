"""What the benchmarks that boot real gVisor sandboxes share.

They use a data dir of their own (``$EMBERBOX_BENCH_DATA_DIR``, default
/var/lib/emberbox-bench), so a benchmark's orchestrator never takes a test run's sandboxes for
orphans, nor the other way round. The ``base`` template is built there through the template
CLI, from the layer cache that ``scripts/setup`` and ``scripts/test`` fill
(``$EMBERBOX_TEMPLATE_CACHE``), which takes a few seconds once the cache is warm.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
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
