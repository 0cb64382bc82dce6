"""A real server on gVisor with the ``code-interpreter`` template, shared by a test module.

The template is built into the node's data dir (or reused from it or from
``EMBERBOX_TEMPLATE_CACHE``, which scripts/setup fills); one server and one sandbox per module
keep the added time small. Needs root and runsc (``require_host`` skips naming what is
missing); like every gVisor server suite it owns the data dir's sandboxes while it runs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from emberbox.server.testing import ServerProcess
from emberbox.templates.code_interpreter import build_code_interpreter
from emberbox.templates.store import TemplateStore


@contextmanager
def code_interpreter_server(tmp: Path) -> Iterator[ServerProcess]:
    from tests import lanes
    from tests.runtimes.gvisor_support import DATA_DIR, require_host

    require_host()
    lanes.require(lanes.SHARED_DATA_DIR)
    cache = os.environ.get("EMBERBOX_TEMPLATE_CACHE")
    asyncio.run(build_code_interpreter(TemplateStore(DATA_DIR), Path(cache) if cache else None))
    server = ServerProcess(
        DATA_DIR,
        database_url=f"sqlite+aiosqlite:///{tmp / 'emberbox.db'}",
        env={"EMBERBOX_BACKEND": "gvisor"},
        log_dir=tmp,
    )
    server.start(timeout_s=60)
    try:
        yield server
    finally:
        server.stop()


def point_sdk_at(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The official SDKs, configured the way a user does: E2B_* variables only."""
    assert server.first_key
    for key, value in server.sdk_env(server.first_key).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
