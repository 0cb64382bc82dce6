"""Assembles the volume service for a server process: volumes are directories on the node's
host bound into its gVisor sandboxes, so they are served only with an embedded gVisor node."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ...node.client import EmbeddedNode, NodeClient
from ...runtimes.gvisor import GVisorRuntime
from ..config import Settings
from .service import VolumeService
from .store import VolumeStore


def open_volume_service(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], node: NodeClient
) -> VolumeService:
    runtime = node.orchestrator.runtime if isinstance(node, EmbeddedNode) else None
    refusal = ""
    if settings.node_url:
        refusal = "volumes need an embedded node (this server uses a remote node)"
    elif not isinstance(runtime, GVisorRuntime):
        refusal = f"volumes need the gVisor runtime (this node runs {settings.runtime})"
    return VolumeService(sessions, VolumeStore(settings.data_dir), settings.limits, refusal)
