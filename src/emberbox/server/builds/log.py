"""A build's log: what the builder writes, as entries with a level and the step they belong to.

The builder writes text (``templates.builder``): step labels ``[n/N] ...`` move the current step,
everything else is output of that step. Entries are kept in order and written to the database
in batches by :meth:`BuildLog.persist`, where ``/status`` and ``/logs`` read them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db.models import utcnow
from ..db.templates import BuildLogLine

STEP_LABEL = re.compile(r"^\[(\d+)/(\d+)\] ")
BASE_STEP, FINALIZE_STEP = "base", "finalize"  # the SDK's names for before/after the steps


@dataclass(frozen=True)
class Entry:
    timestamp: dt.datetime
    level: str
    message: str
    step: str | None


class BuildLog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], build_id: str) -> None:
        self.sessions = sessions
        self.build_id = build_id
        self.step = BASE_STEP
        self._pending: list[Entry] = []
        self._buffer = ""
        self._seq: int | None = None
        self._writing = asyncio.Lock()  # one batch at a time, so sequence numbers stay unique

    def add(self, message: str, level: str = "info", step: str | None = None) -> None:
        self._pending.append(Entry(utcnow(), level, message, step or self.step))

    # TextIO face for the builder
    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            match = STEP_LABEL.match(line)
            if match:
                self.step = match[1]
            elif line.startswith("verifying start command"):
                self.step = FINALIZE_STEP
            self.add(line)
        return len(text)

    def flush(self) -> None:
        pass

    async def persist(self) -> None:
        if self._buffer:
            self.add(self._buffer)
            self._buffer = ""
        async with self._writing:
            await self._write()

    async def _write(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        async with self.sessions.begin() as s:
            if self._seq is None:
                top = select(func.max(BuildLogLine.seq)).where(
                    BuildLogLine.build_id == self.build_id
                )
                self._seq = ((await s.execute(top)).scalar() or -1) + 1
            for e in batch:
                s.add(BuildLogLine(build_id=self.build_id, seq=self._seq, timestamp=e.timestamp,
                                   level=e.level, message=e.message, step=e.step))  # fmt: skip
                self._seq += 1
