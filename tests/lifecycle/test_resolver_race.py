"""The proxy's resolver never caches an address that started dying during its lookup: the
address of a killed sandbox is soon another sandbox's (leases are reused), and user ports
need no token, so a stale entry would route one tenant's traffic to another's sandbox."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from emberbox.server.db import sandboxes as q
from emberbox.server.lifecycle.service import CreateRequest
from emberbox.server.proxy.resolver import SandboxResolver

from .conftest import Plane


async def test_a_forget_during_a_lookup_wins(plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    resolver = SandboxResolver(plane.service.sessions)
    real_route = q.route
    reading = asyncio.Event()

    async def slow_route(session: Any, sandbox_id: str) -> Any:
        found = await real_route(session, sandbox_id)  # read before the kill starts...
        reading.set()
        await asyncio.sleep(0.2)  # ...and the kill starts meanwhile
        return found

    monkeypatch.setattr(q, "route", slow_route)  # the module the resolver reads through
    lookup = asyncio.create_task(resolver.resolve(row.id))
    await reading.wait()
    resolver.forget(row.id)  # what the lifecycle service does when a kill begins
    assert await lookup is None
    monkeypatch.setattr(q, "route", real_route)
    assert row.id not in resolver._cache
    assert await resolver.resolve(row.id) is not None  # a later lookup sees the row as it is
