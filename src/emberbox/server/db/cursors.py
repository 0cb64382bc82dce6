"""Page tokens (``nextToken`` in, ``X-Next-Token`` out): where a page ended, opaque to clients.

A keyset on (time, id) rather than an offset: a row added or deleted between two requests
neither repeats a row on the next page nor hides one from it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt


class BadCursor(ValueError):
    pass


def encode(at: dt.datetime, key: str) -> str:
    raw = f"{at.isoformat()}|{key}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str) -> tuple[dt.datetime, str]:
    """The (time, id) of the last row a page held; :class:`BadCursor` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        ts, key = raw.split("|", 1)
        at = dt.datetime.fromisoformat(ts)
        if at.tzinfo is None:
            raise ValueError("no time zone")
        at = at.astimezone(dt.UTC)  # (year 1 or 9999 in another zone overflows here)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as e:
        raise BadCursor("invalid nextToken") from e
    return at, key
