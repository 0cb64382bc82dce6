"""Helpers for the node tests (``NodeProcess`` itself lives in ``emberbox.server.testing``)."""

from __future__ import annotations

from pathlib import Path

from emberbox.server.testing import NodeProcess, ServerProcess


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
