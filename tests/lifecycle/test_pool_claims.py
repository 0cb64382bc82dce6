"""A create served by the warm pool: the node hands the sandbox over inside the claim, and the
row is written running in the admission that claimed it (one call, one commit). Between the
hand-over and that commit the node lists a sandbox the database does not know yet: the
reaper's orphan check must not kill it, and a create that fails there must not leave it
behind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import sqlalchemy as sa

from emberbox._proto.node import node_pb2 as pb
from emberbox.server.db import sandboxes as q
from emberbox.server.db.models import Sandbox
from emberbox.server.lifecycle.service import CreateRequest

from .conftest import Plane


async def _filled(plane: Plane) -> str:
    """Teach the pool the template with one create, wait until it holds one; that create's id."""
    first = await plane.service.create(plane.who, CreateRequest("base", 600))
    await plane.service.node.orchestrator.pool.wait_full(10)  # type: ignore[attr-defined]
    return first.id


def _hold_after_hand_over(plane: Plane) -> tuple[asyncio.Event, asyncio.Event, list[str]]:
    """Make the control plane's next claim stop between the node's hand-over and its commit
    until ``go`` is set; ``handed`` is set there and the list gets the sandbox's id."""
    handed, go, ids = asyncio.Event(), asyncio.Event(), []
    claim: Callable[[pb.SandboxSpec], Awaitable[pb.ClaimResponse]] = plane.service.node.claim

    async def slow_claim(spec: pb.SandboxSpec) -> pb.ClaimResponse:
        answer = await claim(spec)
        ids.append(answer.sandbox.sandbox_id)
        handed.set()
        await go.wait()
        return answer

    plane.service.node.claim = slow_claim  # type: ignore[method-assign]
    return handed, go, ids


async def test_a_claimed_create_is_running_with_the_pooled_token(pooled_plane: Plane) -> None:
    plane = pooled_plane
    first = await _filled(plane)
    (pooled,) = set(plane.runtime.sandboxes) - {first}
    row = await plane.service.create(plane.who, CreateRequest("base", 600))
    assert row.id == pooled and row.state == "running" and row.envd_url
    assert plane.runtime.envds[pooled].token == row.envd_access_token
    assert await plane.state(pooled) == "running"
    assert [s.sandbox_id for s in (await plane.service.node.list()).sandboxes] == [first, pooled]


async def test_a_reconcile_during_a_claim_leaves_the_claimed_sandbox_alone(
    pooled_plane: Plane,
) -> None:
    plane = pooled_plane
    await _filled(plane)
    handed, go, ids = _hold_after_hand_over(plane)
    creating = asyncio.create_task(plane.service.create(plane.who, CreateRequest("base", 600)))
    await handed.wait()
    (claimed,) = ids
    assert claimed in {s.sandbox_id for s in (await plane.service.node.list()).sandboxes}
    reconciling = asyncio.create_task(plane.reaper.reconcile())
    await asyncio.sleep(0.2)  # it has listed the node and waits for the admission
    go.set()
    row = await creating
    await reconciling
    assert row.id == claimed and plane.runtime.teardowns[claimed] == 0, "killed as an orphan"
    assert await plane.runtime.alive(claimed) and await plane.state(claimed) == "running"


async def test_a_claim_whose_row_fails_to_commit_gives_the_sandbox_back(
    pooled_plane: Plane,
) -> None:
    """The admission's commit fails after the hand-over (here: another row took the id
    meanwhile): the create fails and the handed-over sandbox is killed, not left running."""
    plane = pooled_plane
    first = await _filled(plane)
    handed, go, ids = _hold_after_hand_over(plane)
    creating = asyncio.create_task(plane.service.create(plane.who, CreateRequest("base", 600)))
    await handed.wait()
    (claimed,) = ids
    async with plane.service.sessions.begin() as s:
        await s.execute(sa.update(Sandbox).where(Sandbox.id == first).values(id=claimed))
    go.set()
    with pytest.raises(sa.exc.IntegrityError):
        await creating
    assert plane.runtime.teardowns[claimed] == 1 and claimed not in plane.runtime.sandboxes
    assert [s.sandbox_id for s in (await plane.service.node.list()).sandboxes] == [first]


async def test_a_claim_answer_lost_on_the_way_is_reaped_as_an_orphan(pooled_plane: Plane) -> None:
    """The create is cut off before the claim's answer reaches it (a remote node answered a
    caller that went away): nobody will ever name the sandbox, so the reaper kills it."""
    plane = pooled_plane
    first = await _filled(plane)
    handed, _, ids = _hold_after_hand_over(plane)
    creating = asyncio.create_task(plane.service.create(plane.who, CreateRequest("base", 600)))
    await handed.wait()
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating
    (claimed,) = ids
    async with plane.service.sessions() as s:
        assert await q.get(s, claimed) is None
    await plane.reaper.reconcile()
    assert plane.runtime.teardowns[claimed] == 1 and claimed not in plane.runtime.sandboxes
    assert [s.sandbox_id for s in (await plane.service.node.list()).sandboxes] == [first]
