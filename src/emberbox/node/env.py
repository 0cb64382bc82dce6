"""Reading the node's ``EMBERBOX_*`` settings: one parser per kind of value, one message each."""

from __future__ import annotations

from collections.abc import Mapping


def seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration: a number of seconds, never negative (nor NaN); ``default`` when unset."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected seconds") from None
    if not value >= 0:
        raise ValueError(f"{name}={raw!r} must not be negative")
    return value


def count(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number, never negative; ``default`` when unset."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a whole number") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must not be negative")
    return value
