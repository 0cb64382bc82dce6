"""Parsing of the list endpoints' query parameters."""

from __future__ import annotations

import datetime as dt
from urllib.parse import unquote_plus

from ..lifecycle.states import State
from .errors import ApiError
from .models import MAX_METADATA_KEYS


def parse_metadata(raw: str | None) -> dict[str, str]:
    """The SDKs double-encode: ``k=v&k2=v2`` with each part escaped, then escaped as a whole.

    The framework has undone the outer layer of query encoding; undo the whole-string escape,
    split, then unescape each key and value (what E2B's own server does).
    """
    if not raw:
        return {}
    out: dict[str, str] = {}
    for pair in unquote_plus(raw).split("&"):
        if not pair:
            continue
        if len(out) == MAX_METADATA_KEYS:  # (each one is a condition of the query)
            raise ApiError(400, f"at most {MAX_METADATA_KEYS} metadata filters")
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ApiError(400, f"invalid metadata filter '{pair}': expected key=value")
        out[unquote_plus(key)] = unquote_plus(value)
    return out


_STATES = {"running": {State.RUNNING, State.PAUSING}, "paused": {State.PAUSED, State.RESUMING}}


def parse_states(raw: list[str] | None) -> set[State]:
    """``running,paused`` (comma-separated and/or repeated); absent means both."""
    names = [n.strip() for item in raw or [] for n in item.split(",") if n.strip()]
    if not names:
        names = ["running", "paused"]
    out: set[State] = set()
    for name in names:
        if name not in _STATES:
            raise ApiError(400, f"invalid state '{name}': use running or paused")
        out |= _STATES[name]
    return out


def parse_ms(raw: int | None, name: str) -> dt.datetime | None:
    """A time in ms since the epoch (E2B's log cursors); one no calendar holds is a 400."""
    if raw is None:
        return None
    try:
        return dt.datetime.fromtimestamp(raw / 1000, dt.UTC)
    except (ValueError, OverflowError, OSError) as e:
        raise ApiError(400, f"{name} is not a time in milliseconds since 1970") from e


def parse_time(raw: str | None, name: str) -> dt.datetime | None:
    if not raw:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
        value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)  # (year 1 or 9999 in another zone overflows here)
    except (ValueError, OverflowError) as e:
        raise ApiError(400, f"{name} must be an RFC 3339 timestamp") from e


def parse_order(raw: str | None) -> bool:
    """True for descending (the default)."""
    if raw in (None, "", "desc"):
        return True
    if raw == "asc":
        return False
    raise ApiError(400, "order must be asc or desc")
