"""Our SDK's stateful calls against a real ``emberbox server`` on gVisor, once per face:
snapshots (create from one twice, list and page, delete), fork, rollback in place, pause and
resume, and each refusal mapped to its exception. Every test checks files and processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from emberbox import (
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxUnavailableException,
    SnapshotInfo,
)
from emberbox.server.testing import ServerProcess
from tests import background_counter
from tests.sdk.conftest import items, maybe

COUNTER = background_counter.LOOP


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """On a data dir of its own: this file runs next to the others (tests/lanes.py)."""
    from tests.runtimes.gvisor_support import gvisor_server

    with gvisor_server(tmp_path_factory.mktemp("sdk-snapshots"), own_data_dir=True) as srv:
        yield srv


async def read(sbx: Any, path: str) -> str:
    text: str = await maybe(sbx.files.read(path))
    return text


async def counter(sbx: Any) -> int:
    return int((await maybe(sbx.commands.run(background_counter.READ))).stdout)


async def counting(sbx: Any) -> int:
    """The background counter's value, after checking that it still moves."""
    first = await counter(sbx)
    deadline = time.monotonic() + 10
    while (now := await counter(sbx)) == first:
        assert time.monotonic() < deadline, "the background counter stopped"
        await asyncio.sleep(0.1)
    return now


async def kill_all(*sandboxes: Any) -> None:
    for sbx in sandboxes:
        await maybe(sbx.kill())
        await maybe(sbx.close())


async def test_snapshot_create_twice_list_page_delete(
    face: Any, connection: dict[str, Any]
) -> None:
    src = await maybe(face.create(timeout=300, **connection))
    made: list[Any] = []
    name = f"sdk-{uuid.uuid4().hex[:8]}"
    try:
        await maybe(src.commands.run(COUNTER, background=True))
        await maybe(src.files.write("/home/user/state.txt", "at snapshot"))
        first = await maybe(src.create_snapshot())
        assert isinstance(first, SnapshotInfo)
        assert first.sandbox_id == src.sandbox_id and first.names == []
        assert first.size_bytes is not None and first.size_bytes > 0
        assert first.created_at is not None
        await maybe(src.files.write("/home/user/state.txt", "after snapshot"))
        second = await maybe(src.create_snapshot(name=name))
        assert (second.snapshot_id, second.names) == (name, [name])

        # newest first; the instance form lists this sandbox's snapshots
        mine = await items(src.list_snapshots())
        assert [s.snapshot_id for s in mine] == [name, first.snapshot_id]
        pages = face.list_snapshots(sandbox_id=src.sandbox_id, limit=1, **connection)
        assert [s.snapshot_id for s in await maybe(pages.next_items())] == [name]
        assert pages.has_next and pages.next_token
        assert [s.snapshot_id for s in await maybe(pages.next_items())] == [first.snapshot_id]
        assert not pages.has_next
        with pytest.raises(SandboxException):
            await maybe(pages.next_items())
        by_name = await items(face.list_snapshots(name=name, **connection))
        assert [(s.snapshot_id, s.sandbox_id) for s in by_name] == [(name, src.sandbox_id)]

        for i, template in enumerate([first.snapshot_id, name]):
            sbx = await maybe(face.create(template=template, timeout=120, **connection))
            made.append(sbx)
            assert sbx.sandbox_id != src.sandbox_id
            expected = "at snapshot" if i == 0 else "after snapshot"
            assert await read(sbx, "/home/user/state.txt") == expected
            assert await counting(sbx) > 0  # the snapshot's processes run on in the copy
            await maybe(sbx.files.write("/home/user/state.txt", f"copy {i}"))
        assert [await read(m, "/home/user/state.txt") for m in made] == ["copy 0", "copy 1"]
        assert await read(src, "/home/user/state.txt") == "after snapshot"
    finally:
        await kill_all(*made, src)
    for ref in (first.snapshot_id, name):
        assert await maybe(face.delete_snapshot(ref, **connection)) is True
        assert await maybe(face.delete_snapshot(ref, **connection)) is False
    assert await items(face.list_snapshots(sandbox_id=src.sandbox_id, **connection)) == []
    with pytest.raises(NotFoundException):
        await maybe(face.create(template=first.snapshot_id, timeout=30, **connection))
    with pytest.raises(InvalidArgumentException, match="built-in template"):  # not a snapshot
        await maybe(face.delete_snapshot("base", **connection))


async def test_fork_two_diverge_and_the_source_runs_on(
    face: Any, connection: dict[str, Any]
) -> None:
    src = await maybe(face.create(timeout=300, **connection))
    forks: list[Any] = []
    try:
        await maybe(src.commands.run(COUNTER, background=True))
        await maybe(src.files.write("/home/user/who.txt", "source"))
        end_at = (await maybe(src.get_info())).end_at
        results = await maybe(src.fork(count=2, timeout=120))
        assert len(results) == 2
        for result in results:
            assert isinstance(result, face), result
            forks.append(result)
        assert len({f.sandbox_id for f in forks} | {src.sandbox_id}) == 3
        for i, f in enumerate(forks):
            assert await read(f, "/home/user/who.txt") == "source"
            await maybe(f.files.write("/home/user/who.txt", f"fork {i}"))
            assert await counting(f) > 0
        assert [await read(f, "/home/user/who.txt") for f in forks] == ["fork 0", "fork 1"]
        assert await read(src, "/home/user/who.txt") == "source"
        info = await maybe(src.get_info())
        assert (info.state, info.end_at) == ("running", end_at)
        assert await counting(src) > 0
        with pytest.raises(InvalidArgumentException):
            await maybe(src.fork(count=0))
        with pytest.raises(InvalidArgumentException):
            await maybe(src.fork(count=101))
    finally:
        await kill_all(*forks, src)


async def test_rollback_pause_resume_and_refusals(face: Any, connection: dict[str, Any]) -> None:
    sbx = await maybe(face.create(timeout=300, **connection))
    other = await maybe(face.create(timeout=120, **connection))
    shots: list[SnapshotInfo] = []
    # Both taken under one name: the second takes it over, and each SnapshotInfo still
    # means its own snapshot (its ``id``); a delete by the name deletes both.
    name = f"steps-{sbx.sandbox_id}"
    try:
        ticker = await maybe(sbx.commands.run(COUNTER, background=True))
        await maybe(sbx.files.write("/home/user/step.txt", "step 0"))
        at_first = await counting(sbx)
        shots.append(await maybe(sbx.create_snapshot(name=name)))
        await asyncio.sleep(3)  # ~30 counts, so that going back shows in the counter
        later = await maybe(sbx.commands.run("sleep 900", background=True))
        await maybe(sbx.files.write("/home/user/step.txt", "step 1"))
        shots.append(await maybe(sbx.create_snapshot(name=name)))
        assert shots[0].snapshot_id == shots[1].snapshot_id == name != shots[0].id
        await maybe(sbx.files.write("/home/user/step.txt", "after"))
        before = await counter(sbx)

        # the sync face passes the SnapshotInfo, the async one its id: both are accepted
        await maybe(sbx.rollback(shots[0] if face is Sandbox else shots[0].id))
        # the same object goes on working, on the first snapshot's files and processes
        assert await read(sbx, "/home/user/step.txt") == "step 0"
        assert at_first <= await counting(sbx) < before
        pids = {p.pid for p in await maybe(sbx.commands.list())}
        assert ticker.pid in pids and later.pid not in pids
        await maybe(sbx.rollback(shots[1]))
        assert await read(sbx, "/home/user/step.txt") == "step 1"
        assert later.pid in {p.pid for p in await maybe(sbx.commands.list())}

        theirs = await maybe(other.create_snapshot())
        shots.append(theirs)
        with pytest.raises(InvalidArgumentException, match="taken of sandbox"):
            await maybe(sbx.rollback(theirs))
        with pytest.raises(NotFoundException):
            await maybe(sbx.rollback("nosuchsnapshot"))
        assert await read(sbx, "/home/user/step.txt") == "step 1"  # refusals changed nothing

        assert await maybe(other.pause()) is True
        assert await maybe(other.pause()) is False
        assert (await maybe(other.get_info())).state == "paused"
        with pytest.raises(SandboxUnavailableException):  # 409: not running
            await maybe(other.create_snapshot())
        with pytest.raises(SandboxUnavailableException):
            await maybe(other.fork())
        await maybe(other.resume(timeout=120))
        assert (await maybe(other.get_info())).state == "running"
        assert (await maybe(other.commands.run("echo back"))).stdout == "back\n"
    finally:
        await kill_all(sbx, other)
    assert await maybe(face.delete_snapshot(shots[2].snapshot_id, **connection)) is True
    assert await maybe(face.delete_snapshot(name, **connection)) is True
    for shot in shots:  # (the name's delete took both of its snapshots)
        assert await maybe(face.delete_snapshot(shot.id or "", **connection)) is False


SLEEPER = "setsid sleep 1000 >/dev/null 2>&1 </dev/null &"


async def sleeping(sbx: Any) -> bool:
    found: str = (await maybe(sbx.commands.run("pgrep -x sleep || true"))).stdout
    return found.strip() != ""


async def test_filesystem_pause_reboot_and_lifecycle(face: Any, connection: dict[str, Any]) -> None:
    """``pause(mode="filesystem")``, ``connect(on_resume="reboot")``, a lifecycle whose end
    time keeps only files, and a pause while envd did not answer: files stay, processes end."""
    sbx = await maybe(face.create(timeout=300, **connection))
    ends = await maybe(
        face.create(
            timeout=3,
            lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}},
            **connection,
        )
    )
    try:
        await maybe(sbx.commands.run(SLEEPER))
        await maybe(sbx.files.write("/home/user/a.txt", "kept"))
        assert await sleeping(sbx)
        shot = await maybe(sbx.create_snapshot(mode="filesystem"))
        child = await maybe(face.create(shot.snapshot_id, timeout=60, **connection))
        try:
            assert await read(child, "/home/user/a.txt") == "kept" and not await sleeping(child)
        finally:
            await kill_all(child)
        assert await maybe(face.delete_snapshot(shot.snapshot_id, **connection)) is True
        assert await sleeping(sbx)  # the snapshot's source runs on
        assert await maybe(sbx.pause(mode="filesystem")) is True
        info = await maybe(sbx.get_info())
        assert (info.state, info.pause_mode) == ("paused", "filesystem")
        back = await maybe(face.connect(sbx.sandbox_id, **connection))
        assert await read(back, "/home/user/a.txt") == "kept" and not await sleeping(back)
        assert (await maybe(back.get_info())).pause_mode is None

        await maybe(back.commands.run(SLEEPER))
        await maybe(back.pause())
        assert (await maybe(back.get_info())).pause_mode == "full"
        await maybe(back.resume(on_resume="reboot"))
        assert not await sleeping(back) and await read(back, "/home/user/a.txt") == "kept"

        with pytest.raises(InvalidArgumentException):
            await maybe(back.pause(mode="nothing"))
        with pytest.raises(InvalidArgumentException):
            await maybe(face.create(lifecycle={"on_timeout": "sleep"}, **connection))

        # envd stops answering: a plain pause goes ahead, and a reboot brings it back.
        stop_envd = "setsid sh -c 'sleep 0.5; kill -STOP $0' $PPID >/dev/null 2>&1 &"
        await maybe(back.commands.run(stop_envd, user="root"))
        await asyncio.sleep(1.5)
        assert await maybe(back.pause()) is True
        assert (await maybe(back.get_info())).envd_unresponsive_at_pause is None
        await maybe(back.resume(on_resume="reboot"))
        assert await read(back, "/home/user/a.txt") == "kept"

        deadline = time.monotonic() + 30
        while (info := await maybe(ends.get_info())).state != "paused":
            assert time.monotonic() < deadline, "not paused at its end time"
            await asyncio.sleep(0.1)
        assert info.pause_mode == "filesystem"
    finally:
        await kill_all(sbx, ends)
