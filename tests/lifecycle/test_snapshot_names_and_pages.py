"""Snapshot pages are keyset pages: a snapshot taken or deleted between two requests neither
repeats a snapshot on the next page nor hides one (offsets did both); no name may have a
snapshot id's shape, since ids and names are looked up alike; and snapshots and the team's
templates share one namespace, since a create or a delete naming either looks up both."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select, update

from emberbox.server.auth.store import Principal, authenticate, create_key
from emberbox.server.builds.runner import BuildRunner
from emberbox.server.builds.service import TemplateService
from emberbox.server.builds.uploads import Uploads
from emberbox.server.config import Limits
from emberbox.server.db.models import Snapshot, utcnow
from emberbox.server.db.templates import TeamTemplate
from emberbox.server.lifecycle.errors import Conflict, Invalid, QuotaExceeded, Unsupported
from emberbox.server.lifecycle.service import CreateRequest
from emberbox.server.lifecycle.snapshots import SnapshotService
from emberbox.vocabulary import new_snapshot_id
from tests.node.fake_runtime import CheckpointingRuntime

from .conftest import Plane


async def _pages(service: SnapshotService, plane: Plane, token: str | None = None) -> list[str]:
    """Every id from ``token`` on, one per page."""
    seen = []
    while True:
        page = await service.list(plane.who, sandbox_id=None, name=None, limit=1, next_token=token)
        seen += [s.id for s in page.items]
        if page.next_token is None:
            return seen
        token = page.next_token


async def _taken(plane: Plane, count: int) -> tuple[SnapshotService, str, list[str]]:
    """``count`` snapshots of one new sandbox: the service, the sandbox, their ids in order."""
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    return service, row.id, [(await service.create(plane.who, row.id)).id for _ in range(count)]


async def test_a_snapshot_taken_or_deleted_between_pages_moves_no_other(
    snapshotting_plane: Plane,
) -> None:
    plane = snapshotting_plane
    service, sandbox_id, taken = await _taken(plane, 4)
    newest_first = taken[::-1]

    first = await service.list(plane.who, sandbox_id=None, name=None, limit=1, next_token=None)
    assert [s.id for s in first.items] == newest_first[:1] and first.next_token
    await service.create(plane.who, sandbox_id)  # a newer one does not push the next page back
    assert await _pages(service, plane, first.next_token) == newest_first[1:]

    second = await service.list(
        plane.who, sandbox_id=None, name=None, limit=1, next_token=first.next_token
    )
    assert [s.id for s in second.items] == newest_first[1:2]
    await service.delete(plane.who, newest_first[1])  # the one just listed goes
    assert await _pages(service, plane, second.next_token) == newest_first[2:]


async def test_a_name_shaped_like_a_snapshot_id_is_refused(snapshotting_plane: Plane) -> None:
    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    first = await service.create(plane.who, row.id)
    for name in (first.id, new_snapshot_id()):
        with pytest.raises(Invalid, match="shape of a snapshot id"):
            await service.create(plane.who, row.id, name=name)
    named = await service.create(plane.who, row.id, name=f"{first.id}-v2")  # not an id's shape
    by_id = await service.find(plane.who, first.id)
    by_name = await service.find(plane.who, f"{first.id}-v2")
    assert by_id is not None and by_id.id == first.id
    assert by_name is not None and by_name.id == named.id


async def test_a_snapshot_name_is_1_to_128_characters(snapshotting_plane: Plane) -> None:
    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    assert (await service.create(plane.who, row.id, name="n" * 128)).name == "n" * 128
    assert (await service.create(plane.who, row.id, name="v1.2_x-y")).name == "v1.2_x-y"
    bad = ("", "n" * 129, "n" * 300, "-lead", "sp ace", "team/snap", "a/", "/a", "abc\n", ".a")
    for name in bad:
        with pytest.raises(Invalid, match="1-128 characters"):
            await service.create(plane.who, row.id, name=name)
    with pytest.raises(Invalid, match="a path of the API"):  # DELETE /templates/tags
        await service.create(plane.who, row.id, name="tags")


async def test_a_token_this_server_did_not_give_is_refused(snapshotting_plane: Plane) -> None:
    service = SnapshotService(snapshotting_plane.service)
    for token in ("1", "x", "bm90LWEtdGltZXxzbmFw"):  # an offset, junk, base64 of no time
        with pytest.raises(Invalid, match="nextToken"):
            await service.list(
                snapshotting_plane.who, sandbox_id=None, name=None, limit=1, next_token=token
            )


async def test_snapshots_taken_in_the_same_microsecond_are_each_listed_once(
    snapshotting_plane: Plane,
) -> None:
    """The id breaks ties between equal creation times, in the order and in the cursor."""
    plane = snapshotting_plane
    service, _, taken = await _taken(plane, 5)
    async with plane.service.sessions.begin() as s:
        await s.execute(update(Snapshot).values(created_at=utcnow()))
    listed = await _pages(service, plane)
    assert listed == sorted(taken, reverse=True)


async def test_snapshots_and_the_teams_templates_never_share_a_name(
    snapshotting_plane: Plane, tmp_path: Path
) -> None:
    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    sessions = plane.service.sessions
    templates = TemplateService(
        sessions, Uploads.open(tmp_path, 2**20), BuildRunner(sessions, plane.service.node),
        plane.service.templates.resolve, Limits(),
    )  # fmt: skip
    built = await templates.request_build(plane.who, "myapp")
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    for name in ("myapp", "myapp:default", built.template.id):
        with pytest.raises(Invalid, match="is a template's name"):
            await service.create(plane.who, row.id, name=name)

    snapshot = await service.create(plane.who, row.id, name="mysnap")
    with pytest.raises(Conflict, match="is a snapshot's name"):
        await templates.request_build(plane.who, "mysnap:v2")
    with pytest.raises(Conflict, match="is a snapshot's name"):
        await templates.request_build(plane.who, snapshot.id)
    async with sessions() as s:
        names = {t.name for t in (await s.execute(select(TeamTemplate))).scalars()}
    assert names == {"myapp"}  # the refused requests left no template behind

    # Another team's template holds no name for this one.
    other = await _other_team(plane)
    await templates.request_build(other, "theirs")
    assert (await service.create(plane.who, row.id, name="theirs")).name == "theirs"


async def _other_team(plane: Plane) -> Principal:
    who = await authenticate(
        plane.service.sessions, (await create_key(plane.service.sessions, "t2", "k")).key
    )
    assert who is not None
    return who


async def test_snapshots_taken_at_once_never_land_over_the_teams_quota(
    snapshotting_plane: Plane,
) -> None:
    """Room for two more: of five taken at once, two land and three are refused (each check
    counted the snapshots admitted before it, not only those committed before it began)."""
    plane = snapshotting_plane
    service = SnapshotService(plane.service, max_bytes_per_team=2 * 4096)
    rows = [await plane.service.create(plane.who, CreateRequest("base", 600)) for _ in range(5)]
    results = await asyncio.gather(
        *(service.create(plane.who, row.id) for row in rows), return_exceptions=True
    )
    assert sum(isinstance(r, QuotaExceeded) for r in results) == 3, results
    assert sum(isinstance(r, Snapshot) for r in results) == 2
    assert isinstance(plane.runtime, CheckpointingRuntime)
    assert len(plane.runtime.held) == 2  # the refused ones' checkpoints deleted on the node


async def test_a_team_at_its_quota_is_refused_before_any_checkpoint(
    snapshotting_plane: Plane,
) -> None:
    """A checkpoint disturbs the sandbox (its output streams end): a snapshot or a fork that
    cannot be kept is refused before one is taken."""
    plane = snapshotting_plane
    service = SnapshotService(plane.service, max_bytes_per_team=4096)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await service.create(plane.who, row.id)  # the team is at its quota now
    assert isinstance(plane.runtime, CheckpointingRuntime)
    taken = plane.runtime.checkpoints
    with pytest.raises(QuotaExceeded, match="no snapshot of sandbox"):
        await service.create(plane.who, row.id)
    with pytest.raises(QuotaExceeded, match="no snapshot of sandbox"):
        await service.fork(plane.who, row.id, count=1, timeout_s=60)
    assert plane.runtime.checkpoints == taken
    assert len(plane.runtime.held) == 1


async def test_a_name_taken_over_leaves_each_snapshot_reachable_and_its_delete_frees_them_all(
    snapshotting_plane: Plane,
) -> None:
    """A newer snapshot takes a name over (E2B's rule: the name is a template, and these are
    its builds). Each keeps its own id, which a rollback follows exactly; a delete by the
    name deletes every one taken under it: they were left unnamed, unreachable by the name,
    yet held disk and quota."""
    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    taken = [await service.create(plane.who, row.id, name="ckpt") for _ in range(3)]
    other = await service.create(plane.who, row.id, name="other")
    assert len({s.id for s in taken}) == 3
    assert (await service.find(plane.who, "ckpt")).id == taken[-1].id  # type: ignore[union-attr]

    await service.rollback(plane.who, row.id, taken[0].id)
    assert isinstance(plane.runtime, CheckpointingRuntime)
    assert plane.runtime.restored == [taken[0].id]

    await service.delete(plane.who, "ckpt:default")
    page = await service.list(plane.who, sandbox_id=None, name=None, limit=100, next_token=None)
    assert [s.id for s in page.items] == [other.id]
    assert set(plane.runtime.held) == {other.id}  # the node freed all three
    assert await plane.service.saved_disk_used(plane.who.team_id) == other.size_bytes


async def test_a_delete_by_id_deletes_that_snapshot_only(snapshotting_plane: Plane) -> None:
    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    first, second = [await service.create(plane.who, row.id, name="ckpt") for _ in range(2)]
    await service.delete(plane.who, first.id)
    page = await service.list(plane.who, sandbox_id=None, name=None, limit=100, next_token=None)
    assert [s.id for s in page.items] == [second.id]
    assert (await service.find(plane.who, "ckpt")).id == second.id  # type: ignore[union-attr]


async def test_the_name_filter_takes_an_id_or_a_namespaced_tagged_name(
    snapshotting_plane: Plane,
) -> None:
    """E2B's ``list_snapshots(name=...)``: "by name or ID, optionally tag-qualified"."""
    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    unnamed = await service.create(plane.who, row.id)
    named = await service.create(plane.who, row.id, name="ckpt")

    async def listed(name: str) -> list[str]:
        page = await service.list(plane.who, sandbox_id=None, name=name, limit=100, next_token=None)
        return [s.id for s in page.items]

    assert await listed(unnamed.id) == [unnamed.id]
    assert await listed(named.id) == [named.id]
    for name in ("ckpt", "ckpt:default", "my-team/ckpt", "my-team/ckpt:default"):
        assert await listed(name) == [named.id], name
    assert await listed("ckpt:v2") == []


async def test_a_namespaced_tagged_name_finds_rolls_back_to_and_deletes_the_snapshot(
    snapshotting_plane: Plane,
) -> None:
    """E2B's names are ``team-slug/name:default`` (its ``SnapshotInfo``), so code written for
    it hands those back: a list found the snapshot by them, a create from it, a rollback to
    it and a delete of it answered 404 (a delete the SDK reports as False, the snapshot
    kept, and its disk counted)."""
    plane = snapshotting_plane
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    for ref in ("ckpt", "ckpt:default", "my-team/ckpt", "my-team/ckpt:default"):
        taken = await service.create(plane.who, row.id, name="ckpt")
        assert (await service.find(plane.who, ref)).id == taken.id, ref  # type: ignore[union-attr]
        with pytest.raises(Unsupported):  # (found, and handed to the node: this fake's
            await plane.service.create(plane.who, CreateRequest(ref, 600))  # cannot start one)
        await service.rollback(plane.who, row.id, ref)
        assert isinstance(plane.runtime, CheckpointingRuntime)
        assert plane.runtime.restored[-1] == taken.id, ref
        await service.delete(plane.who, ref)
        assert await service.find(plane.who, "ckpt") is None, ref
    assert await plane.service.saved_disk_used(plane.who.team_id) == 0


async def test_a_template_that_took_the_name_during_the_checkpoint_keeps_it(
    snapshotting_plane: Plane, tmp_path: Path
) -> None:
    """The name is checked before the checkpoint (seconds on gVisor) and again as its row is
    written: a template built meanwhile under the name keeps it, and the snapshot is refused
    with its checkpoint deleted (else a create or a delete by the name meant either)."""
    plane = snapshotting_plane
    assert isinstance(plane.runtime, CheckpointingRuntime)
    sessions = plane.service.sessions
    templates = TemplateService(
        sessions, Uploads.open(tmp_path, 2**20), BuildRunner(sessions, plane.service.node),
        plane.service.templates.resolve, Limits(),
    )  # fmt: skip
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    plane.runtime.checkpoint_delay_s = 0.5
    taking = asyncio.create_task(service.create(plane.who, row.id, name="web"))
    while not plane.runtime.checkpointing:  # noqa: ASYNC110 - the fake runtime's own flag
        await asyncio.sleep(0.01)
    await templates.request_build(plane.who, "web")
    with pytest.raises(Invalid, match="became a template's name"):
        await taking
    assert plane.runtime.held == {}
    page = await service.list(plane.who, sandbox_id=None, name=None, limit=100, next_token=None)
    assert page.items == []


async def test_a_fork_of_a_team_at_its_sandbox_cap_is_refused_before_any_checkpoint(
    snapshotting_plane: Plane,
) -> None:
    """No fork could run: the checkpoint (its streams end, its connections close) is spared."""
    plane = snapshotting_plane
    assert isinstance(plane.runtime, CheckpointingRuntime)
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    plane.service.limits = replace(plane.service.limits, max_concurrent_sandboxes=1)
    with pytest.raises(QuotaExceeded, match="was not forked: concurrent sandbox limit"):
        await service.fork(plane.who, row.id, count=3, timeout_s=60)
    assert plane.runtime.checkpoints == 0


async def test_a_snapshot_cut_off_during_its_checkpoint_is_looked_for_on_the_node(
    snapshotting_plane: Plane,
) -> None:
    """Cancelled (a shutdown's grace ran out) while the node saves it: no row will name it,
    so reconciliation deletes it there rather than leave it hidden on the node's disk."""
    plane = snapshotting_plane
    assert isinstance(plane.runtime, CheckpointingRuntime)
    service = SnapshotService(plane.service)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    plane.runtime.checkpoint_delay_s = 0.3
    taking = asyncio.create_task(service.create(plane.who, row.id))
    while not plane.runtime.checkpointing:  # noqa: ASYNC110 - the fake runtime's own flag
        await asyncio.sleep(0.01)
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    assert len(plane.service.untracked_snapshots) == 1
