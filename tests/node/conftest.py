"""Fixtures of the node tests: the runtime ones, and a remote node with a server in front."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emberbox.server.testing import NodeProcess, ServerProcess
from emberbox.templates.store import Template as StoredTemplate
from tests.api.conftest import point_sdks_at
from tests.runtimes.conftest import base_template, gvisor_config, runtime
from tests.runtimes.gvisor_support import DATA_DIR

from .support import data_dir_sharing_templates

__all__ = ["base_template", "gvisor_config", "remote", "runtime"]


@pytest.fixture
def remote(
    tmp_path: Path, base_template: StoredTemplate, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[NodeProcess, ServerProcess]]:
    """``emberbox node`` on gVisor in a data dir of its own (sharing the test templates), and a
    server with another data dir pointed at it; the official SDKs point at the server."""
    node = NodeProcess(data_dir_sharing_templates(tmp_path / "node", DATA_DIR), "gvisor")
    reach = {"EMBERBOX_NODE_URL": node.url, "EMBERBOX_NODE_TOKEN": node.token}
    server = ServerProcess(tmp_path / "server", env=reach)
    try:
        node.start()
        server.start()
        assert server.first_key
        point_sdks_at(server, server.first_key, monkeypatch)
        yield node, server
    finally:
        server.stop()
        node.stop()
