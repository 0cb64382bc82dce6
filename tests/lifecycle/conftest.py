"""A control plane in-process: real SQLite, an embedded node over the fake runtime."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from emberbox.node.client import EmbeddedNode
from emberbox.node.pool import PoolSettings
from emberbox.server.auth.store import Principal, authenticate, create_key
from emberbox.server.config import Capacity, Limits
from emberbox.server.db import sandboxes as q
from emberbox.server.db.engine import make_engine, make_sessionmaker, migrate
from emberbox.server.lifecycle.reaper import Reaper
from emberbox.server.lifecycle.service import NodeFacts, SandboxService
from emberbox.server.lifecycle.templates import StaticTemplates
from emberbox.server.limits.scheduler import ResourceScheduler
from tests.node.fake_runtime import CheckpointingRuntime, FakeRuntime

HOUR = 3600


@dataclass
class Plane:
    service: SandboxService
    reaper: Reaper
    runtime: FakeRuntime
    who: Principal

    async def state(self, sandbox_id: str) -> str:
        """The sandbox's state as the database holds it."""
        async with self.service.sessions() as s:
            row = await q.get(s, sandbox_id)
        assert row is not None
        return row.state


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    async with _plane(tmp_path) as made:
        yield made


@pytest.fixture
async def pooled_plane(tmp_path: Path) -> AsyncIterator[Plane]:
    """With a warm pool of one per template asked for."""
    async with _plane(tmp_path, PoolSettings(size=1)) as made:
        yield made


@pytest.fixture
async def snapshotting_plane(tmp_path: Path) -> AsyncIterator[Plane]:
    """Over a fake runtime that also checkpoints (``CheckpointingRuntime``)."""
    async with _plane(tmp_path, runtime=CheckpointingRuntime()) as made:
        yield made


@contextlib.asynccontextmanager
async def _plane(
    tmp_path: Path, pool: PoolSettings | None = None, runtime: FakeRuntime | None = None
) -> AsyncIterator[Plane]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await migrate(engine)
    sessions = make_sessionmaker(engine)
    runtime = runtime or FakeRuntime()
    node = EmbeddedNode(runtime, tmp_path / "node", pool=pool, dead_check_every_s=0)
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
