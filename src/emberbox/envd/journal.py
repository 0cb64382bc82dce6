"""envd's own recent events (processes started and ended, uploads), kept for ``GET /logs``.

A bounded ring: the control plane's ``GET /sandboxes/{id}/logs`` and ``emberbox logs`` read it
through the proxy; nothing is written to the sandbox's disk.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

MAX_ENTRIES = 2000


class Journal(logging.Handler):
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        super().__init__(level=logging.INFO)
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_entries)
        self._seq = 0

    def emit(self, record: logging.LogRecord) -> None:
        self._seq += 1
        self._entries.append(
            {
                "seq": self._seq,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )

    def since(self, seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Entries after ``seq`` (a cursor the caller got from the last entry it saw)."""
        return [entry for entry in self._entries if entry["seq"] > seq][:limit]


def install() -> Journal:
    """Attach a journal to envd's loggers (INFO and above), whatever the console level is."""
    journal = Journal()
    logger = logging.getLogger("emberbox.envd")
    logger.addHandler(journal)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
        logger.propagate = False  # keep INFO journal entries off a quieter console
        console = logging.StreamHandler()
        console.setLevel(logging.getLogger().getEffectiveLevel())
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        logger.addHandler(console)
    return journal
