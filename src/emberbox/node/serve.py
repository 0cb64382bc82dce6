"""``emberbox node``: one node as a process of its own, reachable by a control plane over HTTP.

The node takes its data dir's node lock before recovering anything, adopts the sandboxes a
previous node process left running, and keeps them running when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Generator, Sequence
from pathlib import Path

import uvicorn

from ..long_lived import freeze_started
from ..runtimes import select_runtime
from ..vocabulary import PAUSE_KEEP_S
from .app import node_app
from .builds import BuildSettings, NodeBuilds
from .offload import OffloadSettings
from .orchestrator import Orchestrator
from .pool import PoolSettings
from .service import NodeService
from .volumes.service import NodeVolumes


class _Server(uvicorn.Server):
    """Signals are handled by :func:`serve_node`, which also closes the orchestrator."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve_node(
    data_dir: Path,
    runtime_name: str,
    host: str,
    port: int,
    token: str = "",
    envd_command: Sequence[str] | None = None,
    runsc: str = "",
    dead_check_every_s: float = 2.0,
    template_snapshots: bool = True,
    pool: PoolSettings | None = None,
    egress_dns: Sequence[str] = (),
    egress_ca: str = "",
    builds: BuildSettings | None = None,
    offload: OffloadSettings | None = None,
    pause_keep_s: float = PAUSE_KEEP_S,
) -> None:
    """Serve until SIGTERM/SIGINT; the caller holds the data dir's node lock."""
    runtime = select_runtime(
        runtime_name, data_dir, envd_command, runsc, template_snapshots, egress_dns, egress_ca,
        pause_keep_s,
    )  # fmt: skip
    orchestrator = Orchestrator(
        runtime,
        data_dir / "node",
        dead_check_every_s=dead_check_every_s,
        pool=pool,
        offload=offload,
    )
    node_builds = NodeBuilds.for_runtime(data_dir, runtime, builds or BuildSettings())
    volumes = NodeVolumes.for_runtime(data_dir, runtime, orchestrator.volumes_in_use)
    service = NodeService(orchestrator, builds=node_builds, volumes=volumes)
    report = await service.start()
    config = uvicorn.Config(
        node_app(service, token),
        host=host,
        port=port,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                break
            await asyncio.sleep(0.02)
        if server.started:
            freeze_started()  # (before it says it is ready: the one collection's pause)
            print(
                f"Emberbox node on http://{host}:{port} (runtime: {runtime.name}; adopted "
                f"{len(report.adopted)}, removed {len(report.removed)})",
                flush=True,
            )
        await task
    finally:
        await service.close()
