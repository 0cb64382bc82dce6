"""Queries on the secrets and secret_versions tables."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ...vocabulary import SECRET_ID_PREFIX
from .models import Secret, SecretVersion


async def find(s: AsyncSession, team_id: str, ref: str) -> Secret | None:
    """The team's secret named by id (``sec_...``) or by name (any case)."""
    column = Secret.id if ref.startswith(SECRET_ID_PREFIX) else Secret.name
    key = ref if ref.startswith(SECRET_ID_PREFIX) else ref.lower()
    query = select(Secret).where(Secret.team_id == team_id, column == key)
    return (await s.execute(query)).scalar_one_or_none()


async def by_names(s: AsyncSession, team_id: str, names: Sequence[str]) -> Sequence[Secret]:
    query = select(Secret).where(Secret.team_id == team_id, Secret.name.in_(list(names)))
    return (await s.execute(query)).scalars().all()


async def page(s: AsyncSession, team_id: str, after: str, limit: int) -> Sequence[Secret]:
    """Up to ``limit`` of the team's secrets in name order, after the name ``after``."""
    query = (
        select(Secret)
        .where(Secret.team_id == team_id, Secret.name > after)
        .order_by(Secret.name)
        .limit(limit)
    )
    return (await s.execute(query)).scalars().all()


async def count(s: AsyncSession, team_id: str) -> int:
    query = select(func.count()).select_from(Secret).where(Secret.team_id == team_id)
    return int((await s.execute(query)).scalar_one())


async def sealed_value(s: AsyncSession, secret_id: str, version: int) -> bytes | None:
    row = await s.get(SecretVersion, (secret_id, version))
    return row.sealed if row is not None else None
