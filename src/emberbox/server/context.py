"""Builds the long-lived parts of a server process and tears them down in order."""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .auth.store import Principal, authenticate
from .backends.base import SandboxBackend
from .config import Settings
from .db.engine import make_engine, make_sessionmaker, migrate
from .lifecycle.reaper import Reaper
from .lifecycle.service import SandboxService
from .lifecycle.templates import StaticTemplates, StoreTemplates, TemplateCatalog
from .limits.scheduler import ResourceScheduler
from .proxy.resolver import SandboxResolver

log = logging.getLogger("emberbox.server")


def make_backend(settings: Settings) -> SandboxBackend:
    name = settings.resolved_backend
    if name == "local":
        from .backends.local_process import LocalProcessBackend

        raw = os.environ.get("EMBERBOX_LOCAL_ENVD_COMMAND")
        return LocalProcessBackend(settings.data_dir, shlex.split(raw) if raw else None)
    if name in ("orchestrator", "gvisor"):
        from .backends.orchestrator import OrchestratorBackend

        return OrchestratorBackend(settings.data_dir, None if name == "orchestrator" else name)
    raise ValueError(f"unknown backend '{name}' (use auto, gvisor, orchestrator or local)")


@dataclass
class ServerContext:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    backend: SandboxBackend
    service: SandboxService
    resolver: SandboxResolver
    reaper: Reaper

    @classmethod
    async def open(cls, settings: Settings, backend: SandboxBackend | None = None) -> ServerContext:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        await migrate(engine)
        sessions = make_sessionmaker(engine)
        backend = backend or make_backend(settings)
        await backend.start()
        resolver = SandboxResolver(sessions)
        static = StaticTemplates.from_env(os.environ.get("EMBERBOX_TEMPLATES"))
        templates: TemplateCatalog = (
            static
            if settings.resolved_backend == "local"
            else StoreTemplates(settings.data_dir, static)
        )
        service = SandboxService(
            sessions,
            backend,
            templates,
            settings.limits,
            ResourceScheduler(settings.capacity),
            on_gone=resolver.forget,
        )
        reaper = Reaper(service, interval_s=settings.reap_interval_s)
        await reaper.recover()
        return cls(settings, engine, sessions, backend, service, resolver, reaper)

    async def authenticate(self, key: str) -> Principal | None:
        return await authenticate(self.sessions, key)

    async def close(self) -> None:
        await self.reaper.stop()
        await self.backend.close()
        await self.engine.dispose()
