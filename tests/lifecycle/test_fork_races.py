"""A fork whose source is killed while its checkpoint is taken answers 404 and keeps nothing:
not the checkpoint on the node, not the row that counts it against the team's snapshot quota.
(Found by racing ``fork`` against a kill with the official SDK: each such fork left its
checkpoint, ~27 MB on gVisor, until the server's next start.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import update

from emberbox.server.db import snapshots as snaps
from emberbox.server.db.models import Snapshot
from emberbox.server.lifecycle.errors import NotFound
from emberbox.server.lifecycle.service import CreateRequest
from emberbox.server.lifecycle.snapshots import SnapshotService, remove_leftover_snapshots
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


async def test_a_fork_checkpoint_a_crash_left_is_removed_though_its_node_was_renamed(
    snapshotting_plane: Plane,
) -> None:
    """A fork's own checkpoint names the node its source sandbox started on: once that node
    came back under another name (the default name is the host's), a checkpoint a crash left
    was never removed at the server's start, yet hidden from every list and counted in the
    team's quota."""
    plane = snapshotting_plane
    assert isinstance(plane.runtime, CheckpointingRuntime)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    left = await SnapshotService(plane.service).create(plane.who, row.id, internal=True)
    async with plane.service.sessions.begin() as s:
        await s.execute(update(Snapshot).values(node_id="the-node-before-its-rename"))
    assert await remove_leftover_snapshots(plane.service) == [left.id]
    assert plane.runtime.held == {}
    async with plane.service.sessions() as s:
        assert await s.get(Snapshot, left.id) is None


async def test_a_fork_refused_says_why_with_its_machine_readable_code(
    snapshotting_plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each failed fork's entry is an E2B ``Error``: its ``error_code`` too (what a client
    tells "the node is full, retry" by), not only the status and message."""
    import httpx
    from fastapi import FastAPI

    from emberbox.server.api.errors import install_error_handlers
    from emberbox.server.api.snapshots import router
    from emberbox.server.lifecycle.errors import NoCapacity

    plane = snapshotting_plane
    row = await plane.service.create(plane.who, CreateRequest("base", 600))

    async def full(*_: object) -> None:
        raise NoCapacity("the node is full", error_code="sandbox_capacity_unavailable")

    monkeypatch.setattr(plane.service, "create", full)
    app = FastAPI()
    app.state.snapshots = SnapshotService(plane.service)
    app.state.sandbox_domain = None
    install_error_handlers(app)
    app.include_router(router)

    async def as_the_team(scope: dict[str, Any], receive: object, send: object) -> None:
        scope.setdefault("state", {})["principal"] = plane.who
        await app(scope, receive, send)  # type: ignore[arg-type]

    transport = httpx.ASGITransport(app=as_the_team)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        answer = await client.post(f"/sandboxes/{row.id}/fork", json={"count": 2})
    assert answer.status_code == 201
    refused = {"code": 503, "message": "the node is full"}
    refused["error_code"] = "sandbox_capacity_unavailable"
    assert answer.json() == [{"error": refused}] * 2
