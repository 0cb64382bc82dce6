"""A rollback the node reports failed lost its sandbox (the runtime stopped it before the
restore), so the row records it; one whose call never reached the node, or whose answer was
lost, changes nothing on a guess: the sandbox is left as the node holds it."""

from __future__ import annotations

import pytest

from emberbox._connect.errors import Code
from emberbox._proto.node import node_pb2 as pb
from emberbox.node.client import NodeUnavailable
from emberbox.runtimes.base import SandboxStatus
from emberbox.server.lifecycle.errors import NodeFailed, SandboxFailed
from emberbox.server.lifecycle.service import CreateRequest
from emberbox.server.lifecycle.snapshots import SnapshotService

from .conftest import Plane


@pytest.mark.parametrize(
    ("code", "raised", "state"),
    [(Code.UNAVAILABLE, NodeFailed, "running"), (Code.INTERNAL, SandboxFailed, "failed")],
)
async def test_a_rollback_is_recorded_as_lost_only_when_the_node_says_it_failed(
    snapshotting_plane: Plane,
    monkeypatch: pytest.MonkeyPatch,
    code: Code,
    raised: type[Exception],
    state: str,
) -> None:
    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    snapshot = await service.create(plane.who, row.id)

    async def restore(sandbox_id: str, snapshot: pb.Snapshot) -> pb.Sandbox:
        raise NodeUnavailable(code, "connection refused" if code is Code.UNAVAILABLE else "boom")

    monkeypatch.setattr(plane.service.node, "restore", restore)
    with pytest.raises(raised):
        await service.rollback(plane.who, row.id, snapshot.id)
    assert await plane.state(row.id) == state
    if state == "running":
        assert plane.runtime.sandboxes[row.id].status is SandboxStatus.RUNNING
        assert not plane.runtime.teardowns
