"""Volumes created at once stay within the team's limit: each create counted the team's
volumes before any of them committed, so all of them passed (each with its disk made)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from emberbox.host import rootfs
from emberbox.node.client import EmbeddedNode
from emberbox.server.config import Limits
from emberbox.server.lifecycle.errors import QuotaExceeded
from emberbox.server.volumes.service import VolumeService
from tests.node.test_volumes_fake import VolumeRuntime

from .conftest import Plane

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="volume disks are made as root")


async def test_volumes_created_at_once_never_exceed_the_team_s_limit(
    plane: Plane, tmp_path: Path
) -> None:
    node = EmbeddedNode(VolumeRuntime(), tmp_path / "node", dead_check_every_s=0,
                        data_dir=tmp_path)  # fmt: skip
    await node.start()
    try:
        volumes = VolumeService(plane.service.sessions, node, Limits(max_volumes=2, volume_mb=16))
        await volumes.create(plane.who, "first")
        results = await asyncio.gather(
            *(volumes.create(plane.who, f"v{i}") for i in range(4)), return_exceptions=True
        )
        assert sum(isinstance(r, QuotaExceeded) for r in results) == 3, results
        assert len(await volumes.of_team(plane.who)) == 2
        assert len(list((tmp_path / "volumes").iterdir())) == 2  # no disk for the refused
    finally:
        await node.close()
        for mounted in (tmp_path / "volumes").glob("*/data"):
            await rootfs.unmount(mounted)
