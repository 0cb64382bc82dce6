"""A real server for the proxy tests, and a sandbox per test through the official SDK."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from e2b import Sandbox

from emberbox.server.testing import ServerProcess


@pytest.fixture(scope="session")
def proxy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db_url = ""
    server = ServerProcess(tmp_path_factory.mktemp("proxy-server"), database_url=db_url)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.kill_sandboxes()


@pytest.fixture
def sandbox(proxy_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    assert proxy_server.first_key
    for k, v in proxy_server.sdk_env(proxy_server.first_key).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    sbx = Sandbox.create(timeout=120)
    try:
        yield sbx
    finally:
        sbx.kill()


@pytest.fixture
def sandbox_home(sandbox: Sandbox) -> str:
    """The sandbox's working directory (absolute: the local backend shares the host's home)."""
    home: str = sandbox.commands.run("pwd").stdout.strip()
    assert os.path.isdir(home)
    return home
