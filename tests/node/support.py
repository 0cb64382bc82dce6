"""Helpers for the node tests (``NodeProcess`` itself lives in ``emberbox.server.testing``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from emberbox.runtimes.gvisor import GVisorConfig
from emberbox.server.testing import NodeProcess, ServerProcess
from tests.runtimes.gvisor_support import inventory


def data_dir_sharing_templates(path: Path, templates_from: Path) -> Path:
    """A fresh data dir that sees ``templates_from``'s templates: its sandboxes, records and
    host object names (netns, cgroups, leases) are its own, so tests never touch another
    instance's sandboxes."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("layers", "templates", "images"):
        (templates_from / name).mkdir(parents=True, exist_ok=True)
        link = path / name
        if not link.exists():
            link.symlink_to(templates_from / name)
    return path


def server_in_front_of(node: NodeProcess, directory: Path) -> ServerProcess:
    """A started control plane whose node is ``node`` (its data in ``directory``); the caller
    stops it."""
    server = ServerProcess(
        directory, env={"EMBERBOX_NODE_URL": node.url, "EMBERBOX_NODE_TOKEN": node.token}
    )
    server.start()
    return server


@contextlib.contextmanager
def served_leaving_nothing(node: NodeProcess, directory: Path) -> Iterator[ServerProcess]:
    """``node`` started with a control plane in front (its data in ``directory``), both
    stopped afterwards; the host must then hold nothing of the node's it did not hold before
    (checked when the block succeeded)."""
    config = GVisorConfig(data_dir=node.data_dir)
    baseline = asyncio.run(inventory(config))
    node.start()
    try:
        server = server_in_front_of(node, directory)
        try:
            assert server.first_key
            yield server
        finally:
            server.stop()
    finally:
        node.stop()  # its pool is released with it
    assert asyncio.run(inventory(config)).leaked_since(baseline) == {}
