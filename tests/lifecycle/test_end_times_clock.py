"""End times belong to the database's one reaper: tested against a real SQLite database and a
real (embedded) node over the fake runtime, with the reaper's clock moved instead of waiting.

Regressions: the node's own reaper used to kill paused sandboxes once their old end time
passed, and clamped every lifetime to 24 h (recorded as a runtime crash)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from emberbox.node.client import EmbeddedNode
from emberbox.server.auth.store import Principal, authenticate, create_key
from emberbox.server.config import Capacity, Limits
from emberbox.server.db import sandboxes as q
from emberbox.server.db.engine import make_engine, make_sessionmaker, migrate
from emberbox.server.db.models import utcnow
from emberbox.server.lifecycle import reaper as reaper_module
from emberbox.server.lifecycle.errors import Invalid
from emberbox.server.lifecycle.reaper import Reaper
from emberbox.server.lifecycle.service import CreateRequest, NodeFacts, SandboxService
from emberbox.server.lifecycle.templates import StaticTemplates
from emberbox.server.limits.scheduler import ResourceScheduler
from tests.node.fake_runtime import FakeRuntime

HOUR = 3600


@dataclass
class Plane:
    service: SandboxService
    reaper: Reaper
    runtime: FakeRuntime
    who: Principal


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await migrate(engine)
    sessions = make_sessionmaker(engine)
    runtime = FakeRuntime()
    node = EmbeddedNode(runtime, tmp_path / "node", dead_check_every_s=0)
    await node.start()
    info = await node.info()
    service = SandboxService(
        sessions,
        node,
        NodeFacts(info.node_id, info.runtime, info.capabilities),
        StaticTemplates.from_env(None),
        Limits(max_timeout_s=48 * HOUR),
        ResourceScheduler(Capacity(cpus=64, memory_mb=65536)),
    )
    who = await authenticate(sessions, (await create_key(sessions, "t", "k")).key)
    assert who is not None
    yield Plane(service, Reaper(service), runtime, who)
    await node.close()
    await engine.dispose()


def _clock(monkeypatch: pytest.MonkeyPatch, ahead: dt.timedelta) -> None:
    monkeypatch.setattr(reaper_module, "utcnow", lambda: utcnow() + ahead)


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
