"""A fork whose source is killed while its checkpoint is taken answers 404 and keeps nothing:
not the checkpoint on the node, not the row that counts it against the team's snapshot quota.
(Found by racing ``fork`` against a kill with the official SDK: each such fork left its
checkpoint, ~27 MB on gVisor, until the server's next start.)"""

from __future__ import annotations

import asyncio

import pytest

from emberbox.server.db import snapshots as snaps
from emberbox.server.lifecycle.errors import NotFound
from emberbox.server.lifecycle.service import CreateRequest
from emberbox.server.lifecycle.snapshots import SnapshotService
from tests.node.fake_runtime import CheckpointingRuntime

from .conftest import Plane


async def test_a_fork_whose_source_is_killed_meanwhile_keeps_nothing(
    snapshotting_plane: Plane,
) -> None:
    plane = snapshotting_plane
    runtime = plane.runtime
    assert isinstance(runtime, CheckpointingRuntime)
    runtime.checkpoint_delay_s = 0.3
    snapshots = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    fork = asyncio.create_task(snapshots.fork(plane.who, row.id, count=2, timeout_s=60))
    async with asyncio.timeout(2):
        while not runtime.checkpointing:  # noqa: ASYNC110 - the fake runtime's own flag
            await asyncio.sleep(0.01)
    await plane.service.kill(plane.who, row.id)
    with pytest.raises(NotFound):
        await fork
    assert runtime.held == {}
    async with plane.service.sessions() as s:
        assert await snaps.bytes_used(s, plane.who.team_id) == 0
    assert await plane.state(row.id) == "killed"


async def test_a_fork_that_runs_keeps_no_checkpoint_either(snapshotting_plane: Plane) -> None:
    """The same fork left alone: the fake runtime starts nothing from a snapshot, so each fork
    fails, and the checkpoint still goes."""
    runtime = snapshotting_plane.runtime
    assert isinstance(runtime, CheckpointingRuntime)
    plane = snapshotting_plane
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    results = await SnapshotService(plane.service).fork(plane.who, row.id, count=2, timeout_s=60)
    assert len(results) == 2 and all(isinstance(r, Exception) for r in results), results
    assert runtime.held == {}
    assert await plane.state(row.id) == "running"
