"""Builds the long-lived parts of a server process and tears them down in order."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ..node.builds import NodeBuilds
from ..node.client import EmbeddedNode, NodeClient, RemoteNode
from ..runtimes import select_runtime
from .auth.store import Principal, authenticate
from .builds.open import open_template_service
from .builds.service import BuiltinTemplates, TemplateService
from .config import Settings
from .db.engine import make_engine, make_sessionmaker, migrate
from .instance_lock import InstanceLock
from .lifecycle.network import NetworkService
from .lifecycle.reaper import Reaper
from .lifecycle.service import NodeFacts, SandboxService
from .lifecycle.templates import StaticTemplates, StoreTemplates, TemplateCatalog
from .limits.scheduler import ResourceScheduler
from .proxy.resolver import SandboxResolver
from .secrets.cipher import SecretCipher, load_key
from .secrets.service import SecretService
from .volumes.open import open_volume_service
from .volumes.service import VolumeService

log = logging.getLogger("emberbox.server")


def make_node(settings: Settings) -> tuple[NodeClient, list[InstanceLock]]:
    """The node this server schedules on: ``emberbox node`` at ``node_url``, or one embedded
    in this process (then this process also holds the data dir's node lock)."""
    if settings.node_url:
        return RemoteNode(settings.node_url, settings.node_token), []
    lock = InstanceLock(settings.data_dir, "node").acquire()
    runtime = select_runtime(
        settings.runtime,
        settings.data_dir,
        settings.envd_command or None,
        settings.runsc,
        settings.template_snapshots,
        settings.egress_dns,
        settings.egress_ca,
        settings.pause_keep_s,
    )
    node = EmbeddedNode(
        runtime,
        settings.data_dir / "node",
        dead_check_every_s=settings.dead_check_interval_s,
        pool=settings.warm_pool,
        offload=settings.offload,
        builds=NodeBuilds.for_runtime(settings.data_dir, runtime, settings.builds),
        data_dir=settings.data_dir,
    )
    return node, [lock]


@dataclass
class ServerContext:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    node: NodeClient
    service: SandboxService
    resolver: SandboxResolver
    reaper: Reaper
    locks: list[InstanceLock]
    templates: TemplateService
    volumes: VolumeService
    secrets: SecretService

    @classmethod
    async def open(cls, settings: Settings) -> ServerContext:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        locks = [InstanceLock(settings.data_dir, "server").acquire()]
        try:
            node, node_locks = make_node(settings)
            locks += node_locks
            engine = make_engine(settings.db_url)
            await migrate(engine)
            sessions = make_sessionmaker(engine)
            await node.start()
            info = await node.info()
        except BaseException:
            for lock in locks:
                lock.release()
            raise
        facts = NodeFacts(info.node_id, info.runtime, info.capabilities)
        resolver = SandboxResolver(sessions)
        static = StaticTemplates.from_env(settings.templates or None)
        # Templates live beside the node's runtime: this server can read them only when the
        # node is its own; a remote node is asked at create (404 when it lacks the template).
        local_store = info.capabilities.isolation and not settings.node_url
        templates: TemplateCatalog = BuiltinTemplates(
            StoreTemplates(settings.data_dir, static) if local_store else static
        )
        team_templates = open_template_service(settings, sessions, node, templates)
        await team_templates.recover()
        volumes = open_volume_service(settings, sessions, node, info)
        cipher = SecretCipher(load_key(settings.data_dir, settings.secrets_key))
        team_secrets = SecretService(sessions, cipher, settings.limits.max_secrets)
        service = SandboxService(
            sessions,
            node,
            facts,
            templates,
            settings.limits,
            ResourceScheduler(settings.capacity),
            on_gone=resolver.forget,
            on_running=resolver.learn,
            team_templates=team_templates.resolve,
            volumes=volumes,
            secret_service=team_secrets,
        )
        reaper = Reaper(
            service,
            interval_s=settings.reap_interval_s,
            reconcile_every_s=settings.reconcile_interval_s,
        )
        await reaper.recover()
        network = NetworkService(service)
        team_secrets.changed = network.send_header_rules_again
        await network.send_header_rules_again()
        return cls(settings, engine, sessions, node, service, resolver, reaper, locks,
                   team_templates, volumes, team_secrets)  # fmt: skip

    async def authenticate(self, key: str) -> Principal | None:
        return await authenticate(self.sessions, key)

    async def close(self) -> None:
        await self.templates.close()
        await self.reaper.stop()
        await self.node.close()
        await self.engine.dispose()
        for lock in self.locks:
            with contextlib.suppress(OSError):
                lock.release()
