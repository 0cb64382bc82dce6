"""Queries on the snapshots table."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Snapshot

DEFAULT_TAG = ":default"  # E2B names carry a tag; ours have the one


def _meanings(ref: str) -> set[str]:
    """The ids or names ``ref`` may mean: as given (a name with a '/' from before they were
    refused) and without E2B's namespace, each without E2B's tag (``team/name:default``)."""
    ref = ref.removesuffix(DEFAULT_TAG)
    return {ref, ref.rpartition("/")[2]}


async def get(s: AsyncSession, snapshot_id: str) -> Snapshot | None:
    return await s.get(Snapshot, snapshot_id)


def _unqualified(ref: str) -> str | None:
    """``ref`` without E2B's namespace (``team/name``; we have a single one), when it has one:
    looked for only if ``ref`` itself means nothing (a name with a '/' from before they were
    refused still means itself)."""
    return ref.rpartition("/")[2] if "/" in ref else None


async def find(s: AsyncSession, team_id: str, ref: str) -> Snapshot | None:
    """The team's snapshot named ``ref`` by id, or by name (the newest holding it), with or
    without E2B's namespace and tag (``team/name:default``)."""
    ref = ref.removesuffix(DEFAULT_TAG)
    found = await _find_exactly(s, team_id, ref)
    if found is None and (unqualified := _unqualified(ref)) is not None:
        found = await _find_exactly(s, team_id, unqualified)
    return found


async def _find_exactly(s: AsyncSession, team_id: str, ref: str) -> Snapshot | None:
    row = await s.get(Snapshot, ref)
    if row is not None and row.team_id == team_id:
        return row
    by_name = (
        select(Snapshot)
        .where(Snapshot.team_id == team_id, Snapshot.name == ref)
        .order_by(Snapshot.created_at.desc())
        .limit(1)
    )
    return (await s.execute(by_name)).scalar_one_or_none()


async def deletable(s: AsyncSession, team_id: str, ref: str) -> list[Snapshot]:
    """What a delete of ``ref`` removes: the team's snapshot of that id, or every one taken
    under that name (the one holding it now, and those a newer one took it over from); the
    name may carry E2B's namespace and tag, as in :func:`find`."""
    ref = ref.removesuffix(DEFAULT_TAG)
    found = await _deletable_exactly(s, team_id, ref)
    if not found and (unqualified := _unqualified(ref)) is not None:
        found = await _deletable_exactly(s, team_id, unqualified)
    return found


async def _deletable_exactly(s: AsyncSession, team_id: str, ref: str) -> list[Snapshot]:
    row = await s.get(Snapshot, ref)
    if row is not None and row.team_id == team_id:
        return [row]
    named = select(Snapshot).where(
        Snapshot.team_id == team_id, or_(Snapshot.name == ref, Snapshot.taken_as == ref)
    )
    return list((await s.execute(named)).scalars())


async def list_page(
    s: AsyncSession,
    team_id: str,
    *,
    source_sandbox_id: str | None,
    name: str | None,
    limit: int,
    after: tuple[dt.datetime, str] | None = None,
) -> list[Snapshot]:
    """The team's snapshots, newest first, from just past ``after`` (the created time and id
    of the last one a page held); ``limit + 1`` rows tell whether a next page exists."""
    query = select(Snapshot).where(Snapshot.team_id == team_id, Snapshot.internal.is_(False))
    if source_sandbox_id:
        query = query.where(Snapshot.source_sandbox_id == source_sandbox_id)
    if name:  # by name or id, as E2B's: "my-snapshot", "team/my-snapshot", "my-snapshot:default"
        refs = _meanings(name)
        query = query.where(or_(Snapshot.name.in_(refs), Snapshot.id.in_(refs)))
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(Snapshot.created_at < at, and_(Snapshot.created_at == at, Snapshot.id < last_id))
        )
    query = query.order_by(Snapshot.created_at.desc(), Snapshot.id.desc()).limit(limit + 1)
    return list((await s.execute(query)).scalars())


async def bytes_used(s: AsyncSession, team_id: str) -> int:
    total = await s.scalar(
        select(func.coalesce(func.sum(Snapshot.size_bytes), 0)).where(Snapshot.team_id == team_id)
    )
    return int(total or 0)


async def internal_on_node(s: AsyncSession, node_id: str, held: Collection[str]) -> list[Snapshot]:
    """The forks' own checkpoints (of every team) recorded on ``node_id``, or whose ids are
    among ``held`` (what the node holds: a row names the node its source sandbox started on,
    which a node renamed since no longer is)."""
    on_node = Snapshot.node_id == node_id
    query = select(Snapshot).where(
        Snapshot.internal.is_(True), or_(on_node, Snapshot.id.in_(list(held))) if held else on_node
    )
    return list((await s.execute(query)).scalars())


async def known(s: AsyncSession, ids: list[str]) -> set[str]:
    """Which of ``ids`` have a row (whatever node or team holds them)."""
    if not ids:
        return set()
    return set((await s.execute(select(Snapshot.id).where(Snapshot.id.in_(ids)))).scalars())
