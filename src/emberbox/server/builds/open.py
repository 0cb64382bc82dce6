"""Assembles the template service for a server process: builds run where the node's gVisor
runtime is (an embedded node), since each step is a sandbox of the layers below it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ...node.client import EmbeddedNode, NodeClient
from ...runtimes.gvisor import GVisorRuntime
from ...templates.store import TemplateStore
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
    store = TemplateStore(settings.data_dir)
    runtime = node.orchestrator.runtime if isinstance(node, EmbeddedNode) else None
    runner = None
    refusal = ""
    if isinstance(runtime, GVisorRuntime):
        runner = BuildRunner(sessions, store, runtime, settings.builds.max_concurrent,
                             settings.builds.max_queued, settings.builds.cpu_count)  # fmt: skip
    elif settings.node_url:
        refusal = "template builds need an embedded node (this server uses a remote node)"
    else:
        refusal = f"template builds need the gVisor runtime (this node runs {settings.runtime})"
    uploads = Uploads.open(settings.data_dir, settings.builds.max_upload_bytes)
    return TemplateService(sessions, store, uploads, runner, builtin.resolve, settings.limits,
                           refusal, settings.builds.insecure_registries)  # fmt: skip
