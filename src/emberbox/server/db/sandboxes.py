"""Queries on the sandboxes table. State changes are compare-and-set updates, so two actors
(a user's kill and the end-time reaper, say) can never both win the same transition."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from ..lifecycle.states import HOLDS_SAVED_MEMORY, State, check_transition
from . import cursors
from .models import Sandbox, SandboxMetadata, SandboxVolume, utcnow, wakeable


@dataclass(frozen=True)
class Page:
    items: list[Sandbox]
    next_token: str | None


async def get(s: AsyncSession, sandbox_id: str, *, fresh: bool = False) -> Sandbox | None:
    """The sandbox with its metadata and volumes, in one query: the relationships' own
    loading takes three, each a round trip to SQLite's thread. ``fresh`` overwrites what the
    session already holds of it."""
    query = (
        select(Sandbox)
        .where(Sandbox.id == sandbox_id)
        .options(
            joinedload(Sandbox.metadata_items),
            joinedload(Sandbox.volume_mounts).joinedload(SandboxVolume.volume),
        )
        .execution_options(populate_existing=fresh)
    )
    return (await s.execute(query)).unique().scalar_one_or_none()


@dataclass(frozen=True)
class Route:
    """What the proxy needs to reach a sandbox, read in one query (``get`` loads the row's
    metadata and volumes too: two more queries on the first request to every sandbox)."""

    state: str
    envd_url: str | None
    host_address: str | None
    traffic_access_token: str | None
    envd_access_token: str
    mask_request_host: str | None
    auto_resume: bool
    pause_mode: str | None
    envd_unresponsive_at_pause: bool

    @property
    def wakeable(self) -> bool:
        return wakeable(self.auto_resume, self.pause_mode, self.envd_unresponsive_at_pause)


async def route(s: AsyncSession, sandbox_id: str) -> Route | None:
    row = (
        await s.execute(
            select(
                Sandbox.state,
                Sandbox.envd_url,
                Sandbox.host_address,
                Sandbox.traffic_access_token,
                Sandbox.envd_access_token,
                Sandbox.mask_request_host,
                Sandbox.auto_resume,
                Sandbox.pause_mode,
                Sandbox.envd_unresponsive_at_pause,
            ).where(Sandbox.id == sandbox_id)
        )
    ).one_or_none()
    return None if row is None else Route(*row)


async def resume_asked(s: AsyncSession, sandbox_id: str) -> tuple[int | None, str | None]:
    """What the last resume of the sandbox to begin asked for: its timeout and what its end
    time does (None, None: nothing, or no such sandbox)."""
    query = select(Sandbox.resume_timeout_s, Sandbox.resume_on_timeout)
    row = (await s.execute(query.where(Sandbox.id == sandbox_id))).one_or_none()
    return (None, None) if row is None else (row[0], row[1])


async def get_for_team(
    s: AsyncSession, team_id: str, sandbox_id: str, states: Collection[State]
) -> Sandbox | None:
    """The sandbox if ``team_id`` owns it and it is in one of ``states``; another team's is None."""
    row = await get(s, sandbox_id, fresh=True)
    if row is None or row.team_id != team_id or State(row.state) not in states:
        return None
    return row


async def set_state(
    s: AsyncSession,
    sandbox_id: str,
    from_states: Collection[State],
    to: State,
    *,
    ended_by: dt.datetime | None = None,
    **values: Any,
) -> bool:
    """Move the sandbox to ``to`` if it is in one of ``from_states`` (and, with ``ended_by``,
    only if its end time is not later than that); False if it was not."""
    return await _move(s, sandbox_id, from_states, to, _written(to, values), ended_by)


async def set_row_state(
    s: AsyncSession, row: Sandbox, from_states: Collection[State], to: State, **values: Any
) -> bool:
    """:func:`set_state` for a row the caller holds, brought up to date in memory when it
    moved: every value written is known, so the row need not be read back (with its metadata
    and volumes, three queries)."""
    written = _written(to, values)
    if not await _move(s, row.id, from_states, to, written, None):
        return False
    for name, value in written.items():
        setattr(row, name, value)
    return True


def _written(to: State, values: dict[str, Any]) -> dict[str, Any]:
    """Every column a move to ``to`` writes."""
    if to in (State.KILLED, State.FAILED):
        values.setdefault("idempotency_key", None)  # the key may create a new sandbox now
    return {**values, "state": str(to), "updated_at": utcnow()}


async def _move(
    s: AsyncSession,
    sandbox_id: str,
    from_states: Collection[State],
    to: State,
    written: dict[str, Any],
    ended_by: dt.datetime | None,
) -> bool:
    for current in from_states:
        check_transition(current, to)
    where = [Sandbox.id == sandbox_id, Sandbox.state.in_([str(x) for x in from_states])]
    if ended_by is not None:
        where.append(Sandbox.end_at <= ended_by)
    result = await s.execute(
        update(Sandbox).where(*where).values(**written).execution_options(synchronize_session=False)
    )
    return bool(cast(CursorResult[Any], result).rowcount)


async def update_fields(
    s: AsyncSession, sandbox_id: str, states: Collection[State], **values: Any
) -> bool:
    result = await s.execute(
        update(Sandbox)
        .where(Sandbox.id == sandbox_id, Sandbox.state.in_([str(x) for x in states]))
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(cast(CursorResult[Any], result).rowcount)


async def extend_end(s: AsyncSession, sandbox_id: str, end_at: dt.datetime) -> bool:
    """Move a running sandbox's end time later, to ``end_at``; False (nothing changed) when
    it is not running or already ends then or later. One statement: a caller extending it
    from an older read cannot shorten what another caller set meanwhile."""
    result = await s.execute(
        update(Sandbox)
        .where(
            Sandbox.id == sandbox_id,
            Sandbox.state == str(State.RUNNING),
            Sandbox.end_at < end_at,
        )
        .values(updated_at=utcnow(), end_at=end_at)
        .execution_options(synchronize_session=False)
    )
    return bool(cast(CursorResult[Any], result).rowcount)


async def paused_bytes_used(s: AsyncSession, team_id: str) -> int:
    """Disk the team's paused sandboxes' saved memory takes on their nodes."""
    total = await s.scalar(
        select(func.coalesce(func.sum(Sandbox.paused_bytes), 0)).where(
            Sandbox.team_id == team_id,
            Sandbox.state.in_([str(x) for x in HOLDS_SAVED_MEMORY]),
        )
    )
    return int(total or 0)


async def by_idempotency_key(s: AsyncSession, team_id: str, key: str) -> Sandbox | None:
    q = select(Sandbox).where(Sandbox.team_id == team_id, Sandbox.idempotency_key == key)
    return (await s.execute(q)).scalar_one_or_none()


async def count_for_team(s: AsyncSession, team_id: str, states: Collection[State]) -> int:
    q = select(func.count()).where(
        Sandbox.team_id == team_id, Sandbox.state.in_([str(x) for x in states])
    )
    return int((await s.execute(q)).scalar_one())


async def resources_in_use(s: AsyncSession, states: Collection[State]) -> tuple[int, int]:
    """(cpus, memory MiB) summed over sandboxes in ``states``."""
    q = select(
        func.coalesce(func.sum(Sandbox.cpu_count), 0),
        func.coalesce(func.sum(Sandbox.memory_mb), 0),
    ).where(Sandbox.state.in_([str(x) for x in states]))
    cpus, mem = (await s.execute(q)).one()
    return int(cpus), int(mem)


async def ids_in_states(s: AsyncSession, states: Collection[State]) -> list[str]:
    q = select(Sandbox.id).where(Sandbox.state.in_([str(x) for x in states]))
    return list((await s.execute(q)).scalars())


async def with_egress(s: AsyncSession, states: Collection[State]) -> Sequence[Sandbox]:
    """Sandboxes in ``states`` that have egress rules."""
    query = select(Sandbox).where(
        Sandbox.state.in_([str(x) for x in states]), Sandbox.egress.is_not(None)
    )
    return (await s.execute(query)).scalars().all()


async def expired(s: AsyncSession, now: dt.datetime, states: Collection[State]) -> list[str]:
    q = select(Sandbox.id).where(Sandbox.state.in_([str(x) for x in states]), Sandbox.end_at <= now)
    return list((await s.execute(q)).scalars())


async def expired_policies(
    s: AsyncSession, now: dt.datetime, states: Collection[State]
) -> list[tuple[str, str]]:
    """(id, on_timeout) of sandboxes in ``states`` whose end time has passed."""
    q = select(Sandbox.id, Sandbox.on_timeout).where(
        Sandbox.state.in_([str(x) for x in states]), Sandbox.end_at <= now
    )
    return [(sid, policy) for sid, policy in (await s.execute(q)).all()]


async def next_end_at(s: AsyncSession, states: Collection[State]) -> dt.datetime | None:
    q = select(func.min(Sandbox.end_at)).where(Sandbox.state.in_([str(x) for x in states]))
    value = (await s.execute(q)).scalar_one()
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, str):  # SQLite aggregates bypass the column type
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    return None


async def list_page(
    s: AsyncSession,
    *,
    team_id: str,
    states: Collection[State],
    metadata: Mapping[str, str],
    template: str | None = None,
    started_after: dt.datetime | None = None,
    descending: bool = True,
    limit: int = 100,
    cursor: str | None = None,
) -> Page:
    """One page of a team's sandboxes, keyset-paginated on (started_at, id)."""
    q = select(Sandbox).where(
        Sandbox.team_id == team_id, Sandbox.state.in_([str(x) for x in states])
    )
    for key, value in metadata.items():
        q = q.where(
            exists().where(
                SandboxMetadata.sandbox_id == Sandbox.id,
                SandboxMetadata.key == key,
                SandboxMetadata.value == value,
            )
        )
    if template:
        # An id or a name, as the SDKs document it; a ``name:tag`` is its name's.
        name = template.partition(":")[0]
        q = q.where(
            or_(
                Sandbox.template_id == template,
                Sandbox.public_template_id == name,
                Sandbox.alias == name,
            )
        )
    if started_after is not None:
        q = q.where(Sandbox.started_at >= started_after)
    if cursor:
        ts, last_id = cursors.decode(cursor)
        if descending:
            q = q.where(
                or_(Sandbox.started_at < ts, and_(Sandbox.started_at == ts, Sandbox.id < last_id))
            )
        else:
            q = q.where(
                or_(Sandbox.started_at > ts, and_(Sandbox.started_at == ts, Sandbox.id > last_id))
            )
    order: Sequence[Any] = (
        (Sandbox.started_at.desc(), Sandbox.id.desc())
        if descending
        else (Sandbox.started_at.asc(), Sandbox.id.asc())
    )
    rows = list((await s.execute(q.order_by(*order).limit(limit + 1))).scalars())
    more, rows = len(rows) > limit, rows[:limit]
    last = rows[-1] if more and rows else None
    return Page(items=rows, next_token=cursors.encode(last.started_at, last.id) if last else None)
