"""End times belong to the database's one reaper: tested against a real SQLite database and a
real (embedded) node over the fake runtime, with the reaper's clock moved instead of waiting.

Regressions: the node's own reaper used to kill paused sandboxes once their old end time
passed, and clamped every lifetime to 24 h (recorded as a runtime crash)."""

from __future__ import annotations

import datetime as dt

import pytest

from emberbox.server.db import sandboxes as q
from emberbox.server.db.models import utcnow
from emberbox.server.lifecycle import reaper as reaper_module
from emberbox.server.lifecycle import service as service_module
from emberbox.server.lifecycle.errors import Conflict, Invalid
from emberbox.server.lifecycle.service import CreateRequest
from emberbox.server.lifecycle.states import EndReason

from .conftest import HOUR, Plane


def _clock(monkeypatch: pytest.MonkeyPatch, ahead: dt.timedelta) -> None:
    monkeypatch.setattr(reaper_module, "utcnow", lambda: utcnow() + ahead)
    monkeypatch.setattr(service_module, "utcnow", lambda: utcnow() + ahead)


async def _state(plane: Plane, sandbox_id: str) -> tuple[str, str | None]:
    async with plane.service.sessions() as s:
        row = await q.get(s, sandbox_id)
    assert row is not None
    return row.state, row.end_reason


async def test_a_30_hour_sandbox_outlives_the_old_24_hour_clamp(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = await plane.service.create(plane.who, CreateRequest("base", 30 * HOUR))
    assert row.end_at - row.started_at == dt.timedelta(hours=30)
    _clock(monkeypatch, dt.timedelta(hours=25))
    await plane.reaper.tick()
    await plane.reaper.stop()
    assert await _state(plane, row.id) == ("running", None)
    assert row.id in plane.runtime.sandboxes
    _clock(monkeypatch, dt.timedelta(hours=30, seconds=1))
    await plane.reaper.tick()
    await plane.reaper.stop()  # waits for the kill it started
    assert await _state(plane, row.id) == ("killed", "timeout")
    assert plane.runtime.teardowns[row.id] == 1


async def test_paused_past_its_end_time_waits_then_resumes(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = await plane.service.create(plane.who, CreateRequest("base", 60))
    await plane.service.pause(plane.who, row.id)
    _clock(monkeypatch, dt.timedelta(hours=2))
    await plane.reaper.tick()
    await plane.reaper.reconcile()
    await plane.reaper.stop()
    assert await _state(plane, row.id) == ("paused", None)
    resumed, was_paused = await plane.service.connect(plane.who, row.id, 120)
    assert was_paused and resumed.state == "running"
    assert not plane.runtime.teardowns


async def test_lifetimes_are_bounded_by_the_deployment(plane: Plane) -> None:
    for bad in (0, -1, 48 * HOUR + 1):
        with pytest.raises(Invalid):
            await plane.service.create(plane.who, CreateRequest("base", bad))
    assert plane.runtime.sandboxes == {}


async def test_an_end_time_extended_after_the_reaper_looked_wins(plane: Plane) -> None:
    """The reaper lists what expired, then ends each; a set_timeout that lands in between
    must keep the sandbox (it answered 204 to its caller)."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    assert await plane.service.end(row.id, EndReason.TIMEOUT) is False
    assert await _state(plane, row.id) == ("running", None)
    await plane.service.set_timeout(plane.who, row.id, 0)
    assert await plane.service.end(row.id, EndReason.TIMEOUT) is True
    assert await _state(plane, row.id) == ("killed", "timeout")


async def test_a_paused_sandbox_refuses_a_timeout_it_would_drop(plane: Plane) -> None:
    """Its end time comes from the connect that resumes it: a timeout set while it is paused
    would be overwritten then, so it is refused (409) and nothing changes."""
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.pause(plane.who, row.id)
    async with plane.service.sessions() as s:
        before = await q.get(s, row.id)
    assert before is not None
    with pytest.raises(Conflict, match="is paused"):
        await plane.service.set_timeout(plane.who, row.id, 5)
    async with plane.service.sessions() as s:
        after = await q.get(s, row.id)
    assert after is not None and (after.state, after.end_at) == ("paused", before.end_at)
    await plane.service.connect(plane.who, row.id, 600)
    await plane.service.set_timeout(plane.who, row.id, 5)  # running again: it moves
    async with plane.service.sessions() as s:
        moved = await q.get(s, row.id)
    assert moved is not None and moved.end_at < utcnow() + dt.timedelta(seconds=6)
