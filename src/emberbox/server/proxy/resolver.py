"""Sandbox ID → where it answers, from the database, with a short positive cache.

The lifecycle service calls :meth:`forget` the moment a sandbox starts dying or pausing, so a
killed sandbox answers 502 at once instead of after the cache expires. :meth:`lookup` also tells
a paused sandbox apart from a missing one, so the proxy can wake it (auto-resume) or say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ...vocabulary import ENVD_PORT, MASK_PORT_VARIABLE
from ..db import sandboxes as q
from ..db.models import Sandbox
from ..lifecycle.states import State


def port_target(envd_url: str, host: str, port: int) -> tuple[str, int]:
    """Where a sandbox port lives: envd's own URL for its port, else ``host:port``."""
    if port == ENVD_PORT:
        hostport = envd_url.split("://", 1)[-1].rstrip("/")
        h, _, p = hostport.rpartition(":")
        return h.strip("[]"), int(p)
    return host, port


@dataclass(frozen=True)
class Location:
    envd_url: str
    host: str
    # Required on requests to its ports but envd's (``allowPublicTraffic: false``); None: public.
    traffic_token: str | None = None
    # The Host header its ports get (maskRequestHost, ``${PORT}`` unreplaced); None: the proxy's.
    mask_host: str | None = None

    def address(self, port: int) -> tuple[str, int]:
        return port_target(self.envd_url, self.host, port)

    def host_header(self, port: int) -> str | None:
        """The Host header requests to ``port`` carry upstream; None: the proxy's own (envd's
        port is never masked: envd does not look at it)."""
        if self.mask_host is None or port == ENVD_PORT:
            return None
        return self.mask_host.replace(MASK_PORT_VARIABLE, str(port))


@dataclass(frozen=True)
class Paused:
    """The sandbox exists but is paused (or pausing, or resuming); ``auto_resume`` says whether
    traffic may wake it; through envd's port, only traffic carrying ``envd_token`` (or a URL
    signed with it) may."""

    auto_resume: bool
    traffic_token: str | None = None
    envd_token: str = field(default="", repr=False)
    refused: str | None = None  # why traffic could not wake it, once that was tried


_ASLEEP = (State.PAUSED, State.PAUSING, State.RESUMING)


def _location(envd_url: str, host: str, row: q.Route | Sandbox) -> Location:
    return Location(envd_url=envd_url, host=host, traffic_token=row.traffic_access_token,
                    mask_host=row.mask_request_host)  # fmt: skip


class SandboxResolver:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], ttl_s: float = 2.0) -> None:
        self.sessions = sessions
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[Location, float]] = {}
        self._listeners: list[Callable[[str], None]] = []
        # A forget that lands while a lookup is in flight must win: the lookup read the row
        # before the sandbox started dying, and its address may soon be another sandbox's.
        self._epoch = 0
        self._forgotten_at: dict[str, int] = {}

    def on_forget(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(sandbox_id)`` whenever a sandbox stops being reachable."""
        self._listeners.append(listener)

    async def resolve(self, sandbox_id: str) -> Location | None:
        found = await self.lookup(sandbox_id)
        return found if isinstance(found, Location) else None

    async def lookup(self, sandbox_id: str) -> Location | Paused | None:
        """Where a running sandbox answers; :class:`Paused` for a paused one; else None."""
        now = time.monotonic()
        hit = self._cache.get(sandbox_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        asked_at = self._epoch
        async with self.sessions() as s:
            row = await q.route(s, sandbox_id)
        if row is not None and row.state in _ASLEEP:
            # never cached: it may wake
            return Paused(auto_resume=row.wakeable, traffic_token=row.traffic_access_token,
                          envd_token=row.envd_access_token)  # fmt: skip
        if self._forgotten_at.get(sandbox_id, -1) >= asked_at:
            return None  # it started dying while we looked it up
        if row is None or row.state != State.RUNNING or not row.envd_url or not row.host_address:
            self.forget(sandbox_id)
            return None
        loc = _location(row.envd_url, row.host_address, row)
        self._remember(sandbox_id, loc, now)
        return loc

    def learn(self, row: Sandbox) -> None:
        """Cache where a sandbox a create just made running answers, so its first proxied
        request needs no lookup. Its id is new here: if it was forgotten already, it started
        dying (or pausing) meanwhile, and nothing is cached."""
        if row.id in self._forgotten_at or not row.envd_url or not row.host_address:
            return
        self._remember(row.id, _location(row.envd_url, row.host_address, row), time.monotonic())

    def _remember(self, sandbox_id: str, loc: Location, now: float) -> None:
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[sandbox_id] = (loc, now + self.ttl_s)

    def forget(self, sandbox_id: str) -> None:
        self._cache.pop(sandbox_id, None)
        if len(self._forgotten_at) > 50_000:
            self._forgotten_at.clear()  # lookups older than this epoch are long done
        self._forgotten_at[sandbox_id] = self._epoch
        self._epoch += 1
        for listener in self._listeners:
            listener(sandbox_id)
