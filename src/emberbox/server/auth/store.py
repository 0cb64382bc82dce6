"""Teams and API keys in the database."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db.models import ApiKey, Team, utcnow
from .keys import generate_key, hash_key, is_well_formed, lookup_prefix, new_id


@dataclass(frozen=True)
class Principal:
    """Who is calling: every sandbox query is scoped by ``team_id``."""

    team_id: str
    key_id: str


@dataclass(frozen=True)
class CreatedKey:
    team_id: str
    key_id: str
    key: str  # shown once, never stored


async def ensure_team(sessions: async_sessionmaker[AsyncSession], name: str) -> str:
    async with sessions.begin() as s:
        team = (await s.execute(select(Team).where(Team.name == name))).scalar_one_or_none()
        if team is None:
            team = Team(id=new_id(), name=name)
            s.add(team)
        return team.id


async def create_key(
    sessions: async_sessionmaker[AsyncSession], team_name: str, key_name: str = ""
) -> CreatedKey:
    team_id = await ensure_team(sessions, team_name)
    key = generate_key()
    row = ApiKey(
        id=new_id(),
        team_id=team_id,
        prefix=lookup_prefix(key),
        key_hash=hash_key(key),
        name=key_name,
    )
    async with sessions.begin() as s:
        s.add(row)
    return CreatedKey(team_id=team_id, key_id=row.id, key=key)


async def count_keys(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as s:
        return int((await s.execute(select(func.count()).select_from(ApiKey))).scalar_one())


async def authenticate(sessions: async_sessionmaker[AsyncSession], key: str) -> Principal | None:
    """The key's principal, or None for malformed, unknown or revoked keys."""
    if not is_well_formed(key):
        return None
    digest = hash_key(key)
    async with sessions() as s:
        rows = (
            await s.execute(
                select(ApiKey).where(
                    ApiKey.prefix == lookup_prefix(key), ApiKey.revoked_at.is_(None)
                )
            )
        ).scalars()
        for row in rows:
            if hmac.compare_digest(row.key_hash, digest):
                return Principal(team_id=row.team_id, key_id=row.id)
    return None


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    team: str
    name: str
    prefix: str
    created_at: str
    revoked: bool


async def list_keys(sessions: async_sessionmaker[AsyncSession]) -> list[KeyInfo]:
    """Every key with its team; the secret itself is never stored, only its lookup prefix."""
    async with sessions() as s:
        rows = await s.execute(
            select(ApiKey, Team.name)
            .join(Team, Team.id == ApiKey.team_id)
            .order_by(ApiKey.created_at)
        )
        return [
            KeyInfo(
                key_id=key.id,
                team=team,
                name=key.name,
                prefix=key.prefix,
                created_at=key.created_at.isoformat(),
                revoked=key.revoked_at is not None,
            )
            for key, team in rows.all()
        ]


async def revoke_key(sessions: async_sessionmaker[AsyncSession], key_id: str) -> bool:
    """Revoke by id; False when no such live key exists (revocation is final)."""
    async with sessions.begin() as s:
        row = await s.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
        return True
