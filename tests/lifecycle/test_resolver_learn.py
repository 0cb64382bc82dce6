"""A create tells the proxy's resolver where its new sandbox answers, so the first proxied
request to it needs no database lookup; the create's answer is what the database holds."""

from __future__ import annotations

from typing import Any

import pytest

from emberbox.server.db import sandboxes as q
from emberbox.server.lifecycle.service import CreateRequest
from emberbox.server.proxy.resolver import SandboxResolver

from .conftest import Plane


async def test_a_created_sandbox_is_resolved_without_a_lookup(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = SandboxResolver(plane.service.sessions)
    plane.service.on_running = resolver.learn
    row = await plane.service.create(plane.who, CreateRequest("base", 600))

    async def no_lookup(session: Any, sandbox_id: str) -> Any:
        raise AssertionError(f"looked up {sandbox_id} in the database")

    monkeypatch.setattr(q, "route", no_lookup)
    found = await resolver.resolve(row.id)
    assert found is not None
    assert (found.envd_url, found.host) == (row.envd_url, row.host_address)
    assert found.traffic_token == row.traffic_access_token


async def test_the_create_answers_what_the_database_holds(plane: Plane) -> None:
    row = await plane.service.create(plane.who, CreateRequest("base", 600, metadata={"a": "b"}))
    async with plane.service.sessions() as s:
        stored = await q.get(s, row.id)
    assert stored is not None
    for column in ("state", "envd_url", "host_address", "envd_version", "envd_access_token",
                   "traffic_access_token", "template_id", "alias"):  # fmt: skip
        assert getattr(row, column) == getattr(stored, column), column
    assert row.state == "running" and row.envd_url and row.envd_version
    assert (row.end_at - row.started_at).total_seconds() == 600
    assert stored.end_at.replace(tzinfo=None) == row.end_at.replace(tzinfo=None)


async def test_a_sandbox_that_started_dying_first_is_not_cached(plane: Plane) -> None:
    resolver = SandboxResolver(plane.service.sessions)
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    resolver.forget(row.id)  # its kill began before the create's news arrived
    resolver.learn(row)
    assert row.id not in resolver._cache
