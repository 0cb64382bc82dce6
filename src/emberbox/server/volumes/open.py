"""Assembles the volume service for a server process: the node (embedded or remote) keeps the
volumes; whether it can is asked when the service opens."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ...node.client import NodeClient
from ..config import Settings
from .service import VolumeService


def open_volume_service(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], node: NodeClient
) -> VolumeService:
    return VolumeService(sessions, node, settings.limits)
