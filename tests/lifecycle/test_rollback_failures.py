"""Where a failed rollback leaves its sandbox, recorded as the node holds it: a rollback the
node failed before touching it runs on, one that left it paused at the snapshot (gVisor does)
is recorded paused with its disk and resumes there, one that lost it is recorded lost. One
whose call never reached the node, or whose answer was lost, changes nothing on a guess; the
reconciliation then records what the node holds."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from emberbox._connect.errors import Code
from emberbox._proto.node import node_pb2 as pb
from emberbox.node.client import NodeUnavailable
from emberbox.runtimes.base import SandboxStatus
from emberbox.server.db import sandboxes as q
from emberbox.server.lifecycle.errors import NodeFailed, SandboxFailed
from emberbox.server.lifecycle.service import CreateRequest
from emberbox.server.lifecycle.snapshots import SnapshotService
from tests.node.fake_runtime import CheckpointingRuntime

from .conftest import Plane


async def _rolled_back(plane: Plane, fails: str | None) -> tuple[str, Exception | None]:
    """A sandbox, a snapshot of it, and a rollback to it that fails as ``fails`` says."""
    runtime = plane.runtime
    assert isinstance(runtime, CheckpointingRuntime)
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    snapshot = await service.create(plane.who, row.id)
    runtime.restore_fails = fails
    try:
        await service.rollback(plane.who, row.id, snapshot.id)
    except Exception as e:
        return row.id, e
    finally:
        runtime.restore_fails = None
    return row.id, None


async def _paused_bytes(plane: Plane, sandbox_id: str) -> int:
    async with plane.service.sessions() as s:
        row = await q.get(s, sandbox_id)
    assert row is not None
    return row.paused_bytes


async def test_a_rollback_that_works_leaves_it_running(snapshotting_plane: Plane) -> None:
    sid, error = await _rolled_back(snapshotting_plane, None)
    assert error is None and await snapshotting_plane.state(sid) == "running"


@pytest.mark.parametrize(
    ("fails", "state", "words"),
    [
        ("before", "running", "runs on as it was"),
        ("paused", "paused", "paused at the snapshot"),
        ("lost", "failed", "is lost"),
    ],
)
async def test_a_rollback_the_node_failed_is_recorded_as_the_node_left_it(
    snapshotting_plane: Plane, fails: str, state: str, words: str
) -> None:
    plane = snapshotting_plane
    sid, error = await _rolled_back(plane, fails)
    assert isinstance(error, SandboxFailed) and words in error.message, error
    assert await plane.state(sid) == state
    if state == "paused":
        assert await _paused_bytes(plane, sid) == 4096  # counted in the snapshot quota
        _, resumed = await plane.service.connect(plane.who, sid, 600)
        assert resumed and await plane.state(sid) == "running"
        assert plane.runtime.sandboxes[sid].status is SandboxStatus.RUNNING


async def test_a_rollback_whose_answer_was_lost_is_settled_by_reconciliation(
    snapshotting_plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = snapshotting_plane
    node = plane.service.node
    real = node.restore

    async def answer_lost(sandbox_id: str, snapshot: pb.Snapshot) -> pb.Sandbox:
        with contextlib.suppress(Exception):
            await real(sandbox_id, snapshot)
        raise NodeUnavailable(Code.UNAVAILABLE, "connection reset")

    monkeypatch.setattr(node, "restore", answer_lost)
    sid, error = await _rolled_back(plane, "paused")
    assert isinstance(error, NodeFailed) and "may or may not" in error.message
    assert await plane.state(sid) == "running"  # nothing recorded on a guess
    await plane.reaper.reconcile()
    assert await plane.state(sid) == "paused"
    assert await _paused_bytes(plane, sid) == 4096

    # One it reached and that worked stays running through the reconciliation.
    other, error = await _rolled_back(plane, None)
    assert isinstance(error, NodeFailed)
    await plane.reaper.reconcile()
    assert await plane.state(other) == "running"


async def test_a_rollback_that_never_reached_the_node_changes_nothing(
    snapshotting_plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = snapshotting_plane

    async def refused(sandbox_id: str, snapshot: pb.Snapshot) -> pb.Sandbox:
        raise NodeUnavailable(Code.UNAVAILABLE, "connection refused")

    monkeypatch.setattr(plane.service.node, "restore", refused)
    sid, error = await _rolled_back(plane, None)
    assert isinstance(error, NodeFailed)
    assert await plane.state(sid) == "running"
    assert plane.runtime.sandboxes[sid].status is SandboxStatus.RUNNING
    assert not plane.runtime.teardowns


async def test_a_pause_that_waited_for_a_failing_rollback_finds_it_paused(
    snapshotting_plane: Plane,
) -> None:
    """A pause that reached the node while a rollback held the sandbox, which the rollback
    left paused at its snapshot: the pause finds it paused, and it is recorded so (not put
    back to running, nor killed)."""
    plane = snapshotting_plane
    runtime = plane.runtime
    assert isinstance(runtime, CheckpointingRuntime)
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    snapshot = await service.create(plane.who, row.id)
    runtime.restore_fails, runtime.restore_delay_s = "paused", 0.3
    rollback = asyncio.create_task(service.rollback(plane.who, row.id, snapshot.id))
    for _ in range(100):  # until the rollback holds the sandbox on the node
        if runtime.restores:
            break
        await asyncio.sleep(0.01)
    await plane.service.pause(plane.who, row.id)  # waits for the node's lock on it
    with pytest.raises(SandboxFailed, match="paused at the snapshot"):
        await rollback
    assert await plane.state(row.id) == "paused"
    assert await _paused_bytes(plane, row.id) == 4096


async def test_a_rollback_to_another_sandboxs_snapshot_is_refused_whatever_it_holds(
    snapshotting_plane: Plane,
) -> None:
    """400 (a request no server would serve), not the 501 of a files-only snapshot (one a
    server with another runtime might): the ownership rule comes first."""
    from sqlalchemy import update

    from emberbox.server.db.models import Snapshot
    from emberbox.server.lifecycle.errors import Invalid

    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    theirs, mine = [await plane.service.create(plane.who, CreateRequest("base", 600)) for _ in "ab"]
    taken = await service.create(plane.who, theirs.id)
    async with plane.service.sessions.begin() as s:  # as one taken with memory: false
        await s.execute(update(Snapshot).where(Snapshot.id == taken.id).values(memory=False))
    with pytest.raises(Invalid, match="a sandbox rolls back only to its own snapshots"):
        await service.rollback(plane.who, mine.id, taken.id)
    assert isinstance(plane.runtime, CheckpointingRuntime) and plane.runtime.restores == 0
