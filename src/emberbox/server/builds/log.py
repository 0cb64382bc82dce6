"""A build's stored log: the lines the node sent (``node.builds`` gives each its level and the
SDK's step name), kept in order and written to the database in batches by
:meth:`BuildLog.persist`, where ``/status`` and ``/logs`` read them."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db.models import utcnow
from ..db.templates import BuildLogLine


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
        self.step: str | None = None  # of the newest line
        self._pending: list[Entry] = []
        self._seq: int | None = None
        self._writing = asyncio.Lock()  # one batch at a time, so sequence numbers stay unique

    def add(
        self,
        message: str,
        level: str = "info",
        step: str | None = None,
        at: dt.datetime | None = None,
    ) -> None:
        self.step = step or self.step
        self._pending.append(Entry(at or utcnow(), level, message, self.step))

    async def persist(self) -> None:
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
