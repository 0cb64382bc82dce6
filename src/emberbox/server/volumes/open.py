"""Assembles the volume service for a server process: the node (embedded or remote) keeps the
volumes, when its ``Info`` says it can; it also unmounts them when it stops."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..._proto.node import node_pb2 as pb
from ...node.client import NodeClient
from ..config import Settings
from .service import VolumeService


def open_volume_service(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    node: NodeClient,
    info: pb.InfoResponse,
) -> VolumeService:
    refusal = (
        "" if info.capabilities.volumes
        else f"volumes need the gVisor runtime (this node runs {info.runtime})"
    )  # fmt: skip
    return VolumeService(sessions, node, settings.limits, refusal)
