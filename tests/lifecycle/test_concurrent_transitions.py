"""A connect that meets another caller's pause or resume under way waits for its outcome and
answers the sandbox running: the caller wants it running, whoever asked first (a 409 "retry"
would make every client of a shared sandbox write its own retry loop)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import pytest

from emberbox.host.errors import HostError
from emberbox.runtimes.base import SandboxStatus
from emberbox.server.auth.store import Principal
from emberbox.server.db import sandboxes as q
from emberbox.server.db.models import Sandbox, utcnow
from emberbox.server.lifecycle.errors import Conflict, NotFound, SandboxFailed
from emberbox.server.lifecycle.service import CreateRequest

from .conftest import Plane


def _after_the_first_read(
    plane: Plane,
    monkeypatch: pytest.MonkeyPatch,
    then: Callable[[Principal, str], Awaitable[object]],
) -> Callable[[Principal, str], Awaitable[Sandbox]]:
    """``then`` done by another caller just after the service's first read of a sandbox
    (what that read returned is stale from then on); returns the real read."""
    read = plane.service.get
    reads = 0

    async def read_then(who: Principal, sandbox_id: str) -> Sandbox:
        nonlocal reads
        found = await read(who, sandbox_id)
        reads += 1
        if reads == 1:
            await then(who, sandbox_id)
        return found

    monkeypatch.setattr(plane.service, "get", read_then)
    return read


async def test_a_connect_during_a_pause_waits_for_it_then_resumes(plane: Plane) -> None:
    plane.runtime.pause_delay_s = 0.5
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    pausing = asyncio.create_task(plane.service.pause(plane.who, row.id))
    async with asyncio.timeout(2):  # (the pause asks envd whether it answers first)
        while await plane.state(row.id) != "pausing":  # noqa: ASYNC110 - a database row
            await asyncio.sleep(0.01)
    connected, resumed = await plane.service.connect(plane.who, row.id, 600)
    await pausing  # the pause itself succeeded
    assert (connected.id, resumed) == (row.id, True)
    assert await plane.state(row.id) == "running"
    assert plane.runtime.sandboxes[row.id].status is SandboxStatus.RUNNING


async def test_a_connect_whose_sandbox_paused_after_it_was_read_resumes_it(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end time's pause (or another caller's) lands between connect's read of a running
    sandbox and its write of the new end time: the write finds it paused, and the connect
    resumes it rather than answering a paused sandbox running with an end time it lacks."""
    row = await plane.service.create(plane.who, CreateRequest("base", 60))
    _after_the_first_read(plane, monkeypatch, plane.service.pause)
    connected, resumed = await plane.service.connect(plane.who, row.id, 600)
    assert resumed and await plane.state(row.id) == "running"
    assert plane.runtime.sandboxes[row.id].status is SandboxStatus.RUNNING
    assert connected.end_at > utcnow() + dt.timedelta(seconds=590)


async def test_a_connect_never_shortens_an_end_time_set_after_it_read_the_sandbox(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E2B's connect only extends: a ``set_timeout(3600)`` that lands between connect's read
    (an end 60 s away) and its write of now + 300 s keeps its hour."""
    row = await plane.service.create(plane.who, CreateRequest("base", 60))
    read = _after_the_first_read(
        plane, monkeypatch, lambda who, sid: plane.service.set_timeout(who, sid, 3600)
    )
    connected, resumed = await plane.service.connect(plane.who, row.id, 300)
    assert not resumed
    kept = await read(plane.who, row.id)
    assert kept.end_at > utcnow() + dt.timedelta(seconds=3500), kept.end_at
    assert connected.end_at == kept.end_at


async def test_two_connects_of_a_paused_sandbox_both_get_it_running(plane: Plane) -> None:
    plane.runtime.resume_delay_s = 0.3
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, row.id)
    answers = await asyncio.gather(
        plane.service.connect(plane.who, row.id, 600),
        plane.service.connect(plane.who, row.id, 600),
    )
    assert sorted(resumed for _, resumed in answers) == [False, True]  # one resume, not two
    assert await plane.state(row.id) == "running"


async def test_a_pause_during_a_wake_waits_for_it_then_pauses(plane: Plane) -> None:
    """Traffic wakes the sandbox as its user pauses it: a 409 would tell the SDKs it was
    paused already (``pause()`` returns False) while it ran on, using its team's quota."""
    plane.runtime.resume_delay_s = 0.3
    asked = CreateRequest("base", 600, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, asked)
    await plane.service.pause(plane.who, row.id)
    waking = asyncio.create_task(plane.service.wake(row.id))
    while await plane.state(row.id) != "resuming":  # noqa: ASYNC110 - the row's state
        await asyncio.sleep(0.01)
    await plane.service.pause(plane.who, row.id)
    assert (await waking).running  # (the request that woke it was answered)
    assert await plane.state(row.id) == "paused"
    with pytest.raises(Conflict, match="not running"):  # (one paused already is a 409)
        await plane.service.pause(plane.who, row.id)


async def test_of_two_legacy_resumes_one_resumes_and_the_other_is_a_conflict(
    plane: Plane,
) -> None:
    """The legacy ``/resume`` is a 409 for a running sandbox (E2B's), also one another caller
    resumed while it waited; that one leaves the end time as the resume set it. Both were
    answered 201, the second with the end time it asked for."""
    plane.runtime.resume_delay_s = 0.3
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, row.id)
    answers = await asyncio.gather(
        plane.service.connect(plane.who, row.id, 60, resume_only=True),
        plane.service.connect(plane.who, row.id, 3600, resume_only=True),
        return_exceptions=True,
    )
    (resumed,) = [a for a in answers if not isinstance(a, BaseException)]
    (refused,) = [a for a in answers if isinstance(a, BaseException)]
    assert isinstance(refused, Conflict) and "already running" in str(refused)
    assert resumed[1] is True
    async with plane.service.sessions() as s:
        now = await q.get(s, row.id)
    assert now is not None and now.state == "running" and now.end_at == resumed[0].end_at
    with pytest.raises(Conflict, match="already running"):  # (and one running all along)
        await plane.service.connect(plane.who, row.id, 3600, resume_only=True)


async def test_a_legacy_resume_that_ends_auto_pause_ends_auto_resume_with_it(plane: Plane) -> None:
    """``/resume {"autoPause": false}`` of a sandbox made with autoPause and autoResume: it
    is killed at its end time now, and a lifecycle of auto-resume with kill is one a create
    is refused (E2B's SDK: auto_resume only with on_timeout 'pause')."""
    asked = CreateRequest("base", 600, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, asked)
    await plane.service.pause(plane.who, row.id)
    await plane.service.connect(plane.who, row.id, 60, resume_only=True, on_timeout="kill")
    async with plane.service.sessions() as s:
        now = await q.get(s, row.id)
    assert now is not None and (now.state, now.on_timeout, now.auto_resume) == (
        "running", "kill", False,
    )  # fmt: skip


async def test_what_a_legacy_resume_sets_its_end_time_to_do_is_set_by_the_one_that_resumed(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/resume`` with ``autoPause``: the call that resumes the sandbox sets what its end
    time does; one refused for a conflict changes nothing (it put back the value it had read,
    undoing the resuming call's, and the sandbox was killed at its end instead of paused), and
    a resume that fails puts it back."""
    plane.runtime.resume_delay_s = 0.3
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, row.id)
    answers = await asyncio.gather(
        *(plane.service.connect(plane.who, row.id, 60, resume_only=True, on_timeout="pause")
          for _ in range(2)),
        return_exceptions=True,
    )  # fmt: skip
    assert sorted(type(a).__name__ for a in answers) == ["Conflict", "tuple"]
    async with plane.service.sessions() as s:
        now = await q.get(s, row.id)
    assert now is not None and (now.state, now.on_timeout) == ("running", "pause")

    await plane.service.pause(plane.who, row.id)

    async def fails(sandbox_id: str, memory: bool = True) -> object:
        raise HostError("runsc restore failed")

    monkeypatch.setattr(plane.runtime, "resume", fails)
    with pytest.raises(SandboxFailed):
        await plane.service.connect(plane.who, row.id, 60, resume_only=True, on_timeout="kill")
    async with plane.service.sessions() as s:
        now = await q.get(s, row.id)
    assert now is not None and (now.state, now.on_timeout) == ("paused", "pause")


async def test_a_pause_that_finds_the_sandbox_gone_from_its_node_is_not_found(plane: Plane) -> None:
    """A kill from another caller that reached the node first (CI's stress test met it between
    the pause's checks and its node call): 404 like every other operation, not a 500, and
    the row is not left pausing."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    assert await plane.service.node.kill(row.id)
    with pytest.raises(NotFound, match="no longer exists on its node"):
        await plane.service.pause(plane.who, row.id)
    assert await plane.state(row.id) != "pausing"


async def test_a_connect_whose_sandbox_is_killed_while_it_resumes_is_404(plane: Plane) -> None:
    """Not 201 with a sandbox on its way out: the caller would go on using it."""
    plane.runtime.resume_delay_s = 0.5
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, row.id)
    connecting = asyncio.create_task(plane.service.connect(plane.who, row.id, 600))
    async with asyncio.timeout(2):
        while await plane.state(row.id) != "resuming":  # noqa: ASYNC110 - a database row
            await asyncio.sleep(0.01)
    await plane.service.kill(plane.who, row.id)
    with pytest.raises(NotFound, match="killed while it resumed"):
        await connecting
    assert await plane.state(row.id) == "killed"
    assert row.id not in plane.runtime.sandboxes
