"""Helpers for the node tests (``NodeProcess`` itself lives in ``emberbox.server.testing``)."""

from __future__ import annotations

from pathlib import Path


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
