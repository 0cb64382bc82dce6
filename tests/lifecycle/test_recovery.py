"""A server killed in the middle of a pause or resume, or a node whose answer to one was lost:
the database takes the node's word for where the sandbox got to (at the restart, or from the
next listing), instead of staying "pausing" forever or guessing."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import pytest

from emberbox._connect.errors import Code
from emberbox.host.errors import HostError
from emberbox.node.client import EmbeddedNode, NodeError, NodeUnavailable, NodeUnsupported
from emberbox.server.db import sandboxes as q
from emberbox.server.db import snapshots as snapshot_rows
from emberbox.server.db.models import utcnow
from emberbox.server.lifecycle import snapshots as snapshots_module
from emberbox.server.lifecycle.errors import GuestUnhealthy, NodeFailed, NotFound, SandboxFailed
from emberbox.server.lifecycle.service import CreateRequest, snapshot_message
from emberbox.server.lifecycle.snapshots import SnapshotService
from emberbox.server.lifecycle.states import State
from tests.node.fake_runtime import FILES_BYTES, MEMORY_BYTES

from .conftest import Plane


async def _force(plane: Plane, sandbox_id: str, state: State) -> None:
    async with plane.service.sessions.begin() as s:
        assert await q.update_fields(s, sandbox_id, list(State), state=str(state))


async def _as_recorded(plane: Plane, sandbox_id: str) -> tuple[str, str | None, bool, int]:
    """The row's state, its pause mode, whether traffic may wake it, and the disk it counts."""
    async with plane.service.sessions() as s:
        row = await q.get(s, sandbox_id)
        route = await q.route(s, sandbox_id)
    assert row is not None and route is not None
    return row.state, row.pause_mode, route.wakeable, row.paused_bytes


async def _crash_past_the_end(
    plane: Plane, sandbox_id: str, left_in: State, ended_ago: dt.timedelta
) -> None:
    """The server killed with the sandbox ``left_in`` a transition, its end time passed
    ``ended_ago``: then the restart's recovery and one reaper tick."""
    async with plane.service.sessions.begin() as s:
        end_at = utcnow() - ended_ago
        assert await q.update_fields(s, sandbox_id, list(State), end_at=end_at)
    await _force(plane, sandbox_id, left_in)
    await plane.reaper.recover()
    await plane.reaper.tick()
    await plane.reaper.stop()


@pytest.mark.parametrize(
    ("pause_on_node", "left_in", "expected"),
    [
        (True, State.PAUSING, "paused"),  # crashed after the node paused it
        (False, State.PAUSING, "running"),  # crashed before the node paused it
        (False, State.RESUMING, "running"),  # crashed after the node resumed it
        (True, State.RESUMING, "paused"),  # crashed before the node resumed it
    ],
)
async def test_half_done_pause_or_resume_settles_on_the_nodes_word(
    plane: Plane, pause_on_node: bool, left_in: State, expected: str
) -> None:
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    if pause_on_node:
        await plane.service.node.pause(row.id)
    await _force(plane, row.id, left_in)
    await plane.reaper.recover()
    assert await plane.state(row.id) == expected
    assert not plane.runtime.teardowns
    async with plane.service.sessions() as s:
        recovered = await q.get(s, row.id)
    # A pause the server never recorded still counts its disk (the fake's pause saves 4096
    # bytes); before, the row said 0 and the snapshot quota never saw it.
    assert recovered is not None and recovered.paused_bytes == (4096 if pause_on_node else 0)


async def test_a_half_done_pause_settles_as_what_the_node_kept(plane: Plane) -> None:
    """The row said a memory pause; the node kept only the files (the end time's memory save
    failed and its files-only pause then got through, say): recorded ``filesystem``, which
    traffic does not wake. It was recorded as the row said."""
    plane.service.facts.capabilities.filesystem_pause = True
    req = CreateRequest("base", 600, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, req)
    await plane.service.node.pause(row.id, memory=False)
    async with plane.service.sessions.begin() as s:
        await q.update_fields(s, row.id, [State.RUNNING], state=str(State.PAUSING),
                              pause_mode="full")  # fmt: skip
    await plane.reaper.reconcile()
    assert await _as_recorded(plane, row.id) == ("paused", "filesystem", False, FILES_BYTES)


async def test_a_settle_changes_only_a_row_still_as_it_was_read(plane: Plane) -> None:
    """A listing settles a row left resuming: if the row is pausing by then (another switch
    began since it was read), the listing says nothing of that one and the row is left to it.
    It was settled from either state."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    listing = await plane.service.node.list()
    await _force(plane, row.id, State.PAUSING)
    await plane.reaper._settle([row.id], listing, resuming={row.id})  # (read as resuming)
    assert await plane.state(row.id) == "pausing"
    await plane.reaper._settle([row.id], listing, resuming=set())  # (read as pausing)
    assert await plane.state(row.id) == "running"


async def test_half_done_pause_of_a_lost_sandbox_is_recorded_as_crashed(plane: Plane) -> None:
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.node.kill(row.id)  # gone from the node while the server was down
    await _force(plane, row.id, State.PAUSING)
    await plane.reaper.recover()
    assert await plane.state(row.id) == "failed"


async def test_a_resume_that_got_through_gets_a_fresh_end_time(plane: Plane) -> None:
    """Paused past its end time, resumed, server killed before it recorded the resume: the
    recovered sandbox must not be ended at once by its stale end time."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await _crash_past_the_end(plane, row.id, State.RESUMING, dt.timedelta(hours=1))
    assert await plane.state(row.id) == "running"
    assert not plane.runtime.teardowns


async def test_a_pause_that_did_not_get_through_keeps_the_end_time(plane: Plane) -> None:
    """Server killed mid-pause, the sandbox still running on the node: its lifetime is as
    before (a fresh end time, as for a resume, would shorten or lengthen it)."""
    row = await plane.service.create(plane.who, CreateRequest("base", 3600))
    await _force(plane, row.id, State.PAUSING)
    await plane.reaper.recover()
    assert await plane.state(row.id) == "running"
    async with plane.service.sessions() as s:
        recovered = await q.get(s, row.id)
    assert recovered is not None and recovered.end_at == row.end_at


async def test_a_pause_at_the_end_time_cut_by_a_crash_is_taken_again(plane: Plane) -> None:
    """An ``autoPause`` sandbox whose pause at its end time a crash cut off (the node still
    runs it) is paused by the first tick after the restart, not given more time."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600, auto_pause=True))
    await _crash_past_the_end(plane, row.id, State.PAUSING, dt.timedelta(seconds=1))
    assert await plane.state(row.id) == "paused"
    assert not plane.runtime.teardowns


async def test_a_paused_sandbox_the_node_lost_is_recorded_as_crashed(plane: Plane) -> None:
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, row.id)
    await plane.service.node.kill(row.id)  # the node lost it (a host reboot, say)
    await plane.reaper.reconcile()
    assert await plane.state(row.id) == "failed"


async def test_a_cancelled_pause_leaves_the_sandbox_running(plane: Plane) -> None:
    plane.runtime.pause_delay_s = 5.0
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    pausing = asyncio.create_task(plane.service.pause(plane.who, row.id))
    for _ in range(400):  # (a fixed sleep lost the race on a busy host)
        if await plane.state(row.id) == "pausing":
            break
        await asyncio.sleep(0.01)
    assert await plane.state(row.id) == "pausing"
    pausing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pausing
    assert await plane.state(row.id) == "running"


async def test_pause_with_require_healthy_guest_checks_envd_first(plane: Plane) -> None:
    """requireHealthyGuest: a guest whose envd does not answer is refused (503) and keeps
    running; one that answers is paused."""
    sick = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.runtime.envds[sick.id].stop()  # envd stops answering; the machine is still up
    with pytest.raises(GuestUnhealthy):
        await plane.service.pause(plane.who, sick.id, require_healthy_guest=True)
    assert await plane.state(sick.id) == "running"
    well = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, well.id, require_healthy_guest=True)
    assert await plane.state(well.id) == "paused"


def _answer_lost_after(call: Callable[..., Awaitable[object]]) -> Callable[..., Awaitable[object]]:
    """``call`` made (the node's, or ``_nothing``: never reached), then its answer lost."""

    async def lost(*args: object, **kwargs: object) -> object:
        await call(*args, **kwargs)
        raise NodeUnavailable(Code.UNAVAILABLE, "node at http://node: connection reset")

    return lost


async def _nothing(*args: object, **kwargs: object) -> None:
    return None


@pytest.mark.parametrize(("reached", "expected"), [(True, "paused"), (False, "running")])
async def test_a_pause_whose_answer_was_lost_settles_on_the_nodes_word(
    plane: Plane, monkeypatch: pytest.MonkeyPatch, reached: bool, expected: str
) -> None:
    """A separate node paused the sandbox (or never got the call) and its answer was lost:
    the row is not put back to running on a guess (it would route traffic to a paused
    sandbox and fail every pause after), but left pausing for the node's listing to settle."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    real = plane.service.node.pause
    monkeypatch.setattr(
        plane.service.node, "pause", _answer_lost_after(real if reached else _nothing)
    )
    with pytest.raises(NodeFailed):
        await plane.service.pause(plane.who, row.id)
    assert await plane.state(row.id) == "pausing"
    monkeypatch.setattr(plane.service.node, "pause", real)
    await plane.reaper.reconcile()
    assert await plane.state(row.id) == expected
    _, resumed = await plane.service.connect(plane.who, row.id, 600)
    assert resumed is reached and await plane.state(row.id) == "running"
    assert not plane.runtime.teardowns


@pytest.mark.parametrize(("reached", "expected"), [(True, "running"), (False, "paused")])
async def test_a_resume_whose_answer_was_lost_settles_on_the_nodes_word(
    plane: Plane, monkeypatch: pytest.MonkeyPatch, reached: bool, expected: str
) -> None:
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, row.id)
    real = plane.service.node.resume
    monkeypatch.setattr(
        plane.service.node, "resume", _answer_lost_after(real if reached else _nothing)
    )
    with pytest.raises(NodeFailed):
        await plane.service.connect(plane.who, row.id, 600)
    assert await plane.state(row.id) == "resuming"
    await plane.reaper.reconcile()
    assert await plane.state(row.id) == expected
    async with plane.service.sessions() as s:
        settled = await q.get(s, row.id)
    assert settled is not None
    if reached:  # running again, with an end time that lies ahead
        assert settled.end_at > utcnow()
    assert not plane.runtime.teardowns


async def test_a_resume_the_node_finished_after_its_row_settled_paused_is_recorded_running(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A separate node's answer to a resume was lost while the node was still at it: the
    next listing still showed it paused, so the row settled paused; then the node finished.
    The row is recorded running, with an end time ahead (it ran with none, every later
    connect refused by a node that already runs it)."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, row.id)
    real = plane.service.node.resume
    finish = asyncio.Event()
    finished: list[asyncio.Task[object]] = []

    async def lost(*args: object, **kwargs: object) -> object:
        async def later() -> object:
            await finish.wait()
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        finished.append(asyncio.create_task(later()))
        raise NodeUnavailable(Code.UNAVAILABLE, "node at http://node: connection reset")

    monkeypatch.setattr(plane.service.node, "resume", lost)
    with pytest.raises(NodeFailed):
        await plane.service.connect(plane.who, row.id, 600)
    await plane.reaper.reconcile()
    assert await plane.state(row.id) == "paused"  # what the node said then
    finish.set()
    await finished[0]
    await plane.reaper.reconcile()
    assert await plane.state(row.id) == "running"
    async with plane.service.sessions() as s:
        settled = await q.get(s, row.id)
    assert settled is not None and settled.end_at > utcnow() and settled.pause_mode is None
    assert not plane.runtime.teardowns


async def test_an_end_time_pause_the_node_saved_but_answered_failed_is_kept_paused(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node paused the sandbox, then failed (recording it, say) and answered an error:
    the end time's pause finds it paused on the node and records it so. It was killed, the
    user's work lost, as a pause that had kept nothing."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    real = plane.service.node.pause

    async def saved_then_failed(*args: object, **kwargs: object) -> object:
        await real(*args, **kwargs)  # type: ignore[arg-type]
        raise NodeError(Code.INTERNAL, "saving the node's record failed: disk full")

    monkeypatch.setattr(plane.service.node, "pause", saved_then_failed)
    async with plane.service.sessions.begin() as s:  # its end time has come
        await q.update_fields(s, row.id, [State.RUNNING], end_at=utcnow())
    assert await plane.service.pause_at_end(row.id)
    assert await plane.state(row.id) == "paused"
    assert not plane.runtime.teardowns
    monkeypatch.setattr(plane.service.node, "pause", real)
    _, resumed = await plane.service.connect(plane.who, row.id, 60)
    assert resumed and await plane.state(row.id) == "running"


@pytest.mark.parametrize("keep_memory", [True, False])
async def test_a_user_pause_the_node_saved_but_answered_failed_is_recorded_paused(
    plane: Plane, monkeypatch: pytest.MonkeyPatch, keep_memory: bool
) -> None:
    """As at the end time: ``sandbox.pause()`` whose node saved the sandbox and then failed
    finds it paused on the node, records it so, with the disk it takes and what was kept
    (only its files: traffic must not wake it), and answers the pause done. It was put back
    to running while the node held it paused (until a reconciliation)."""
    plane.service.facts.capabilities.filesystem_pause = True
    req = CreateRequest("base", 600, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, req)
    real = plane.service.node.pause

    async def saved_then_failed(*args: object, **kwargs: object) -> object:
        await real(*args, **kwargs)  # type: ignore[arg-type]
        raise NodeError(Code.INTERNAL, "saving the node's record failed: disk full")

    monkeypatch.setattr(plane.service.node, "pause", saved_then_failed)
    await plane.service.pause(plane.who, row.id, keep_memory=keep_memory)
    kept = ("full", MEMORY_BYTES) if keep_memory else ("filesystem", FILES_BYTES)
    assert await _as_recorded(plane, row.id) == ("paused", kept[0], keep_memory, kept[1])
    monkeypatch.setattr(plane.service.node, "pause", real)
    _, resumed = await plane.service.connect(plane.who, row.id, 60)
    assert resumed and await plane.state(row.id) == "running"


async def test_reconciliation_records_a_files_only_pause_as_files_only(plane: Plane) -> None:
    """A running row whose node holds it paused with only its files (a files-only pause
    whose answer never came back, say) is recorded paused ``filesystem``: traffic must not
    wake it, and a resume boots it afresh. It was recorded as keeping its memory."""
    plane.service.facts.capabilities.filesystem_pause = True
    req = CreateRequest("base", 600, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, req)
    await plane.service.node.pause(row.id, memory=False)
    await plane.reaper.reconcile()
    assert await _as_recorded(plane, row.id) == ("paused", "filesystem", False, FILES_BYTES)
    await plane.service.kill(plane.who, row.id)


async def test_reconciliation_leaves_a_pause_under_way_to_its_caller(plane: Plane) -> None:
    plane.runtime.pause_delay_s = 0.5
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    pausing = asyncio.create_task(plane.service.pause(plane.who, row.id))
    for _ in range(400):
        if await plane.state(row.id) == "pausing":
            break
        await asyncio.sleep(0.01)
    await plane.reaper.reconcile()  # the node still lists it running: not settled from that
    assert await plane.state(row.id) == "pausing"
    await pausing
    assert await plane.state(row.id) == "paused"


@pytest.mark.parametrize("reached", [True, False])
async def test_a_create_whose_answer_was_lost_is_a_502_and_leaves_no_sandbox(
    plane: Plane, monkeypatch: pytest.MonkeyPatch, reached: bool
) -> None:
    """A separate node that did not answer a create: 502 (it was a 500, as if the node had
    failed inside); the row is failed, and a sandbox the node made anyway is an orphan the
    next reconciliation kills."""
    real = plane.service.node.create
    monkeypatch.setattr(
        plane.service.node, "create", _answer_lost_after(real if reached else _nothing)
    )
    with pytest.raises(NodeFailed, match="did not answer"):
        await plane.service.create(plane.who, CreateRequest("base", 600))
    monkeypatch.setattr(plane.service.node, "create", real)
    await plane.reaper.reconcile()
    assert [s.sandbox_id for s in (await plane.service.node.list()).sandboxes] == []


@pytest.mark.parametrize("reached", [True, False])
async def test_a_snapshot_whose_answer_was_lost_is_a_502(
    snapshotting_plane: Plane, monkeypatch: pytest.MonkeyPatch, reached: bool
) -> None:
    plane = snapshotting_plane
    snapshots = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    real = plane.service.node.checkpoint
    monkeypatch.setattr(
        plane.service.node, "checkpoint", _answer_lost_after(real if reached else _nothing)
    )
    with pytest.raises(NodeFailed, match="did not answer"):
        await snapshots.create(plane.who, row.id)
    assert await plane.state(row.id) == "running"  # it keeps running either way
    # A checkpoint the node took anyway has no row: the next reconciliation deletes it (it
    # stayed, hidden from every list, until the server's next start).
    assert len(await plane.service.node.list_snapshots()) == (1 if reached else 0)
    await plane.reaper.reconcile()
    assert list(await plane.service.node.list_snapshots()) == []
    # Deleted, it is no longer looked for; never taken, it is looked for a while (a save whose
    # answer was lost may finish on the node later).
    assert bool(plane.service.untracked_snapshots) is not reached


async def test_a_fork_whose_checkpoint_delete_was_lost_deletes_it_at_reconciliation(
    snapshotting_plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork deletes its own checkpoint once its sandboxes run; a node that did not answer
    that delete kept the files, which nothing listed, until the server's next start."""
    plane = snapshotting_plane
    snapshots = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    real = plane.service.node.delete_snapshot
    monkeypatch.setattr(plane.service.node, "delete_snapshot", _answer_lost_after(_nothing))
    await snapshots.fork(plane.who, row.id, 1, 60)  # (the fake cannot start the fork itself)
    assert len(await plane.service.node.list_snapshots()) == 1
    monkeypatch.setattr(plane.service.node, "delete_snapshot", real)
    await plane.reaper.reconcile()
    assert list(await plane.service.node.list_snapshots()) == []


async def test_a_snapshot_delete_the_node_failed_is_retried_however_long_it_stays_down(
    snapshotting_plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row is gone and the node failed the delete: the checkpoint is deleted once the
    node answers, also after ``UNTRACKED_LOOK_S`` (it was forgotten then, and stayed on the
    node's disk, hidden from every list, until the server's next start). One the node no
    longer lists is no longer looked for."""
    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    kept, vanished = [await service.create(plane.who, row.id) for _ in range(2)]
    node = plane.service.node
    real_delete, real_list = node.delete_snapshot, node.list_snapshots

    async def fails(*args: object, **kwargs: object) -> None:
        raise NodeError(Code.INTERNAL, "removing the checkpoint failed: device busy")

    async def down(*args: object, **kwargs: object) -> None:
        raise NodeUnavailable(Code.UNAVAILABLE, "node at http://node: connection refused")

    monkeypatch.setattr(node, "delete_snapshot", fails)
    monkeypatch.setattr(snapshots_module, "UNTRACKED_LOOK_S", 0.0)  # as if long down
    for snapshot in (kept, vanished):
        await service.delete(plane.who, snapshot.id)
    assert {s.snapshot_id for s in await node.list_snapshots()} == {kept.id, vanished.id}
    monkeypatch.setattr(node, "list_snapshots", down)
    await plane.reaper.reconcile()  # the node down: nothing is learnt, nothing forgotten
    monkeypatch.setattr(node, "list_snapshots", real_list)
    monkeypatch.setattr(node, "delete_snapshot", real_delete)
    await real_delete(snapshot_message(vanished))  # (removed by hand meanwhile, say)
    await plane.reaper.reconcile()
    assert list(await node.list_snapshots()) == []
    assert plane.service.untracked_snapshots == {}


async def test_a_node_that_keeps_no_snapshots_ends_the_search_for_lost_ones(
    snapshotting_plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints whose delete failed are looked for until a listing no longer shows them; a
    node that answers it lists none (its runtime keeps none) ends that search, rather than
    each failed delete being looked for as long as the server runs."""
    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    snapshot = await service.create(plane.who, row.id)
    node = plane.service.node

    async def fails(*args: object, **kwargs: object) -> None:
        raise NodeError(Code.INTERNAL, "removing the checkpoint failed: device busy")

    async def unsupported(*args: object, **kwargs: object) -> None:
        raise NodeUnsupported(Code.UNIMPLEMENTED, "this node's runtime keeps no snapshots")

    monkeypatch.setattr(node, "delete_snapshot", fails)
    await service.delete(plane.who, snapshot.id)
    monkeypatch.setattr(node, "list_snapshots", unsupported)
    await plane.reaper.reconcile()
    assert plane.service.untracked_snapshots == {}


async def test_a_snapshot_whose_row_was_not_written_is_deleted_at_reconciliation(
    snapshotting_plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node took the checkpoint and the database then failed: the caller gets the error,
    and the checkpoint no row names is deleted (it stayed on the node's disk, hidden from
    every list, until the server's next start)."""
    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))

    async def database_fails(*args: object, **kwargs: object) -> int:
        raise OSError("database is locked")

    monkeypatch.setattr(snapshot_rows, "bytes_used", database_fails)
    with pytest.raises(OSError, match="database is locked"):
        await service.create(plane.who, row.id, "named")
    monkeypatch.undo()
    assert len(await plane.service.node.list_snapshots()) == 1
    await plane.reaper.reconcile()
    assert list(await plane.service.node.list_snapshots()) == []
    assert await plane.state(row.id) == "running"
    # a snapshot whose row was written is never taken for one of these
    named = await service.create(plane.who, row.id, "named")
    await plane.reaper.reconcile()
    assert [s.snapshot_id for s in await plane.service.node.list_snapshots()] == [named.id]


@pytest.mark.parametrize("memory_saves", [True, False])
async def test_a_resume_that_fails_after_the_sandbox_ran_records_what_was_saved_again(
    plane: Plane, monkeypatch: pytest.MonkeyPatch, memory_saves: bool
) -> None:
    """The node runs the sandbox again, its envd never answers, and the node saves it again:
    that save takes other disk than the pause before, and may keep only its files (its
    memory could not be saved). The row kept the first pause's size, which the team's
    snapshot quota then counted, and its mode, so traffic woke and rebooted a sandbox whose
    processes were gone."""
    plane.service.facts.capabilities.filesystem_pause = True
    req = CreateRequest("base", 600, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, req)
    await plane.service.pause(plane.who, row.id)
    plane.runtime.envds[row.id].running.clear()  # envd hangs once it runs again
    node = plane.service.node
    assert isinstance(node, EmbeddedNode)
    monkeypatch.setattr(node.orchestrator, "boot_timeout_s", 0.3)
    first_pause = plane.runtime.pause

    async def saves_more(sandbox_id: str, memory: bool = True) -> int:
        if memory and not memory_saves:
            raise HostError("checkpoint refused: a socket in TIME_WAIT")
        await first_pause(sandbox_id, memory)
        return 12345

    monkeypatch.setattr(plane.runtime, "pause", saves_more)
    with pytest.raises(Exception, match="resume failed"):
        await plane.service.connect(plane.who, row.id, 600)
    mode = "full" if memory_saves else "filesystem"
    assert await _as_recorded(plane, row.id) == ("paused", mode, memory_saves, 12345)


async def test_a_user_pause_killed_meanwhile_is_not_answered_done(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node saved the sandbox and answered an error, and a kill landed meanwhile: the
    pause answers that the sandbox is gone, not that it paused."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    real = plane.service.node.pause

    async def saved_killed_then_failed(*args: object, **kwargs: object) -> object:
        await real(*args, **kwargs)  # type: ignore[arg-type]
        async with plane.service.sessions.begin() as s:  # a kill's first step
            await q.update_fields(s, row.id, [State.PAUSING], state=str(State.KILLING))
        raise NodeError(Code.INTERNAL, "saving the node's record failed: disk full")

    monkeypatch.setattr(plane.service.node, "pause", saved_killed_then_failed)
    with pytest.raises(NotFound, match="killed while it paused"):
        await plane.service.pause(plane.who, row.id)
    assert await plane.state(row.id) == "killing"


async def _lifetime(plane: Plane, sandbox_id: str) -> tuple[str, str, float]:
    """The row's state, what its end time does, and the seconds left until it."""
    async with plane.service.sessions() as s:
        row = await q.get(s, sandbox_id)
    assert row is not None
    return row.state, row.on_timeout, (row.end_at - utcnow()).total_seconds()


async def _reconciled_running_as_asked(
    plane: Plane, sandbox_id: str, on_timeout: str, timeout_s: int
) -> None:
    """After a reconciliation the sandbox is running, its end time does ``on_timeout`` and
    lies ``timeout_s`` ahead (as its resume asked)."""
    await plane.reaper.reconcile()
    state, now_on_timeout, left_s = await _lifetime(plane, sandbox_id)
    assert (state, now_on_timeout) == ("running", on_timeout)
    assert timeout_s - 10 < left_s <= timeout_s


@pytest.mark.parametrize("reached", [True, False])
async def test_a_resume_recorded_from_the_nodes_listing_runs_as_it_asked(
    plane: Plane, monkeypatch: pytest.MonkeyPatch, reached: bool
) -> None:
    """A legacy resume with ``autoPause`` and a 60 s timeout whose answer was lost: recorded
    running from the listing, it gets those 60 s (it got E2B's connect default, 300 s) and
    pauses at its end. Recorded paused (the node had not got to it), its end time does what
    it did before (the resume's ``autoPause`` stayed on a sandbox it never resumed) until the
    node runs it after all."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, row.id)
    real = plane.service.node.resume
    monkeypatch.setattr(
        plane.service.node, "resume", _answer_lost_after(real if reached else _nothing)
    )
    with pytest.raises(NodeFailed):
        await plane.service.connect(plane.who, row.id, 60, resume_only=True, on_timeout="pause")
    if not reached:
        await plane.reaper.reconcile()
        state, on_timeout, _ = await _lifetime(plane, row.id)
        assert (state, on_timeout) == ("paused", "kill")
        await real(row.id, row.envd_access_token)  # the node gets to it after all
    await _reconciled_running_as_asked(plane, row.id, "pause", 60)
    assert not plane.runtime.teardowns


async def test_a_resume_given_up_on_that_the_node_finished_runs_as_it_asked(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A legacy resume with ``autoPause`` cancelled here (its client went away, the server
    stopped) while a separate node went on with it: the row is put back paused, and the
    listing then shows the sandbox running. Recorded running, it ends as that resume asked.
    It got 300 s and the end time's old action (kill), the ``autoPause`` put back."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, row.id)
    real = plane.service.node.resume
    finish = asyncio.Event()
    on_node: list[asyncio.Task[object]] = []
    asked = asyncio.Event()

    async def goes_on_without_us(*args: object, **kwargs: object) -> object:
        async def later() -> object:
            await finish.wait()
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        on_node.append(asyncio.create_task(later()))
        asked.set()
        await asyncio.Event().wait()  # (no answer until cancelled)
        raise AssertionError

    monkeypatch.setattr(plane.service.node, "resume", goes_on_without_us)
    call = asyncio.create_task(
        plane.service.connect(plane.who, row.id, 60, resume_only=True, on_timeout="pause")
    )
    await asked.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert (await _lifetime(plane, row.id))[:2] == ("paused", "kill")
    finish.set()
    await on_node[0]
    await _reconciled_running_as_asked(plane, row.id, "pause", 60)


async def test_a_wake_recorded_from_the_nodes_listing_gets_the_sandboxs_own_lifetime(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Traffic woke a sandbox created with a 120 s timeout and the node's answer was lost:
    recorded running from the listing, it has 120 s ahead, as a wake gives (it had 300)."""
    req = CreateRequest("base", 120, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, req)
    await plane.service.pause(plane.who, row.id)
    monkeypatch.setattr(plane.service.node, "resume", _answer_lost_after(plane.service.node.resume))
    woken = await plane.service.wake(row.id)
    assert not woken.running
    await _reconciled_running_as_asked(plane, row.id, "pause", 120)


async def test_a_resume_the_node_ran_but_answered_failed_runs_as_it_asked(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node ran the sandbox and then failed to record it (its disk full, say): the resume
    answers failed and the row goes back to paused, then the listing shows it running. What
    that resume asked for is kept for it (it was dropped with the failure, and the sandbox
    got 300 s and the end time's old action)."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, row.id)
    real = plane.service.node.resume

    async def ran_then_failed(*args: object, **kwargs: object) -> object:
        await real(*args, **kwargs)  # type: ignore[arg-type]
        raise NodeError(Code.INTERNAL, "saving the node's record failed: disk full")

    monkeypatch.setattr(plane.service.node, "resume", ran_then_failed)
    with pytest.raises(SandboxFailed):
        await plane.service.connect(plane.who, row.id, 60, resume_only=True, on_timeout="pause")
    assert (await _lifetime(plane, row.id))[:2] == ("paused", "kill")
    await _reconciled_running_as_asked(plane, row.id, "pause", 60)
