"""Queries on the volumes and sandbox_volumes tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Sandbox, SandboxVolume, Volume


async def get(s: AsyncSession, team_id: str, volume_id: str) -> Volume | None:
    row = await s.get(Volume, volume_id)
    return row if row is not None and row.team_id == team_id else None


async def by_name(s: AsyncSession, team_id: str, name: str) -> Volume | None:
    query = select(Volume).where(Volume.team_id == team_id, Volume.name == name)
    return (await s.execute(query)).scalar_one_or_none()


async def list_for_team(s: AsyncSession, team_id: str) -> Sequence[Volume]:
    query = select(Volume).where(Volume.team_id == team_id).order_by(Volume.created_at)
    return (await s.execute(query)).scalars().all()


async def all_ids(s: AsyncSession) -> list[str]:
    return list((await s.execute(select(Volume.id))).scalars().all())


async def mounted_by(s: AsyncSession, volume_id: str, states: Iterable[str]) -> list[str]:
    """Ids of the sandboxes in ``states`` that mount the volume."""
    query = (
        select(SandboxVolume.sandbox_id)
        .join(Sandbox, Sandbox.id == SandboxVolume.sandbox_id)
        .where(SandboxVolume.volume_id == volume_id, Sandbox.state.in_(list(states)))
    )
    return list((await s.execute(query)).scalars().all())


async def has_volumes(s: AsyncSession, sandbox_id: str) -> bool:
    query = select(func.count()).where(SandboxVolume.sandbox_id == sandbox_id)
    return bool((await s.execute(query)).scalar_one())
