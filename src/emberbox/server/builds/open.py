"""Assembles the template service for a server process: uploads are kept here, builds run on
the node (through its messages, embedded or remote), where the templates and build sandboxes
are."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ...node.client import NodeClient
from ..config import Settings
from ..lifecycle.templates import TemplateCatalog
from .runner import BuildRunner
from .service import TemplateService
from .uploads import Uploads


def open_template_service(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    node: NodeClient,
    builtin: TemplateCatalog,
) -> TemplateService:
    uploads = Uploads.open(settings.data_dir, settings.max_upload_bytes)
    return TemplateService(sessions, uploads, BuildRunner(sessions, node), builtin.resolve,
                           settings.limits)  # fmt: skip
