"""A sandbox's logs: its creation, then what envd recorded inside it (processes started and
ended, uploads), read from envd's journal when asked. ``GET /sandboxes/{id}/logs`` and E2B's
structured ``GET /v2/sandboxes/{id}/logs`` (cursor, direction, level, search)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Query
from pydantic import ValidationError

from ..db.models import Sandbox
from .deps import Caller, Service
from .errors import error_responses
from .models import LogLevel, SandboxLog, SandboxLogEntry, SandboxLogs, SandboxLogsV2
from .query import parse_ms
from .route import ApiRoute

router = APIRouter(tags=["sandboxes"], route_class=ApiRoute)

MAX_ENTRIES = 1000
# ``level`` asks for that one and those after it.
LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)


def _journal_entry(item: Any) -> SandboxLogEntry | None:
    """One entry of envd's journal; the guest writes it, so one it garbled is left out."""
    try:
        level = item.get("level", "info")
        entry = SandboxLogEntry(
            timestamp=item["timestamp"],
            level=level if level in ("debug", "info", "error") else "warn",
            message=item["message"],
            fields={"seq": str(item["seq"]), "logger": str(item.get("logger", ""))},
        )
    except (AttributeError, KeyError, TypeError, ValidationError):
        return None
    if entry.timestamp.tzinfo is None:  # (compared with aware times)
        entry.timestamp = entry.timestamp.replace(tzinfo=dt.UTC)
    return entry


def _to_ms(at: dt.datetime) -> dt.datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _entries(row: Sandbox, journal: list[dict[str, Any]]) -> list[SandboxLogEntry]:
    """Oldest first. A sandbox started from a checkpoint (a snapshot, a fork, its template's
    snapshot) or handed over from the warm pool has envd's journal of before it: its source's
    processes, the pool's priming. What envd stamped before the sandbox was admitted is not
    the sandbox's own, and is left out (rows from before 2026-12-06 know no admission)."""
    # In envd's precision (ms): an entry of the admission's own millisecond is the sandbox's.
    admitted = _to_ms(row.admitted_at) if row.admitted_at else None
    created = SandboxLogEntry(
        timestamp=admitted or _to_ms(row.started_at),
        level="info",
        message=f"sandbox created from template {row.shown_template_id}",
        fields={"event": "lifecycle"},
    )
    own = [
        e
        for e in map(_journal_entry, journal)
        if e is not None and (admitted is None or e.timestamp >= admitted)
    ]
    return [created, *own]


@router.get(
    "/sandboxes/{sandbox_id}/logs",
    response_model=SandboxLogs,
    responses=error_responses(400, 404, 502),
    summary="Lifecycle events and the processes envd ran (newest last)",
)
async def sandbox_logs(
    who: Caller,
    svc: Service,
    sandbox_id: str,
    start: int | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ENTRIES)] = MAX_ENTRIES,
) -> SandboxLogs:
    """``start`` is a time in ms (E2B's meaning): entries from then on, at most ``limit``.
    An entry's ``fields["seq"]`` tells entries of the same millisecond apart."""
    since = parse_ms(start, "start")
    entries = _entries(*await svc.envd_journal(who, sandbox_id))
    if since is not None:
        entries = [e for e in entries if e.timestamp >= since]
    entries = entries[:limit]
    return SandboxLogs(
        logs=[SandboxLog(timestamp=e.timestamp, line=e.message) for e in entries],
        logEntries=entries,
    )


@router.get(
    "/v2/sandboxes/{sandbox_id}/logs",
    response_model=SandboxLogsV2,
    responses=error_responses(400, 404, 502),
    summary="Structured log entries from a cursor (a time in ms), forward or backward",
)
async def sandbox_logs_v2(
    who: Caller,
    svc: Service,
    sandbox_id: str,
    cursor: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_ENTRIES)] = MAX_ENTRIES,
    direction: Literal["forward", "backward"] = "backward",
    level: LogLevel | None = None,
    search: Annotated[str | None, Query(max_length=256)] = None,
) -> SandboxLogsV2:
    """``forward``: entries from ``cursor`` on, oldest first; ``backward`` (the default, as
    E2B's): entries up to ``cursor`` (else the newest), newest first. ``level`` keeps that
    level and the more severe ones; ``search`` keeps messages holding it (case-sensitive)."""
    at = parse_ms(cursor, "cursor")
    entries = _entries(*await svc.envd_journal(who, sandbox_id))
    if level is not None:
        least = LEVELS.index(level)
        entries = [e for e in entries if LEVELS.index(e.level) >= least]
    if search:
        entries = [e for e in entries if search in e.message]
    if direction == "forward":
        entries = [e for e in entries if at is None or e.timestamp >= at]
    else:
        entries = [e for e in reversed(entries) if at is None or e.timestamp <= at]
    return SandboxLogsV2(logs=entries[:limit])
