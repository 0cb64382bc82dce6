"""Real server processes for the API tests, on SQLite and (when configured) PostgreSQL.

``EMBERBOX_TEST_POSTGRES_URL`` (e.g. ``postgresql+asyncpg://emberbox:emberbox@127.0.0.1/emberbox``)
turns on the PostgreSQL variants; each server gets a fresh database that is dropped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from emberbox.server.testing import (
    ServerProcess,
    create_postgres_database,
    drop_postgres_database,
)
from tests.api.e2b_wire_check import E2bWireChecker
from tests.api.openapi_check import OpenApiChecker

PG_URL = os.environ.get("EMBERBOX_TEST_POSTGRES_URL", "")

DB_PARAMS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=pytest.mark.skipif(not PG_URL, reason="EMBERBOX_TEST_POSTGRES_URL not set"),
    ),
]

# Main test server settings: a small max timeout so "out of range" is cheap to hit.
MAX_TIMEOUT_S = 3600


@dataclass
class Running:
    """A started server plus two keys from different teams.

    Every response of :meth:`client` is checked against the server's own ``/openapi.json`` and
    parsed with the official e2b SDK's generated client models (wire drift from E2B itself).
    """

    server: ServerProcess
    key: str
    other_key: str
    checker: OpenApiChecker | None = None
    wire: E2bWireChecker = field(default_factory=E2bWireChecker)

    def client(self, key: str | None = None) -> httpx.Client:
        if self.checker is None:
            self.checker = OpenApiChecker(httpx.get(self.server.api_url + "/openapi.json").json())
        headers = {"X-API-KEY": key if key is not None else self.key}
        return httpx.Client(
            base_url=self.server.api_url,
            headers=headers,
            timeout=30,
            event_hooks={"response": [self.checker, self.wire]},
        )


def start_server(tmp: Path, db: str, env: Mapping[str, str] | None = None) -> Iterator[Running]:
    db_url = create_postgres_database(PG_URL) if db == "postgres" else ""
    server = ServerProcess(tmp, database_url=db_url, env=env)
    try:
        server.start()
        assert server.first_key is not None, "first start must print a key"
        other = server.create_key("other-team")
        yield Running(server, server.first_key, other)
    finally:
        server.stop()
        server.kill_sandboxes()
        if db_url:
            drop_postgres_database(PG_URL, db_url)


@pytest.fixture(scope="session", params=DB_PARAMS)
def running(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    yield from start_server(
        tmp_path_factory.mktemp(f"server-{request.param}"),
        request.param,
        {"EMBERBOX_MAX_TIMEOUT_S": str(MAX_TIMEOUT_S), "EMBERBOX_MAX_BODY_BYTES": "65536"},
    )


@pytest.fixture
def api(running: Running) -> Iterator[httpx.Client]:
    with running.client() as c:
        yield c


def point_sdks_at(server: ServerProcess, key: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the official e2b SDKs at ``server`` the way a user does: environment variables
    (and none of the ones that would send them elsewhere); returns ``key``."""
    for k, v in server.sdk_env(key).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    return key


@pytest.fixture
def sdk_env(running: Running, monkeypatch: pytest.MonkeyPatch) -> Running:
    """Point the official e2b SDK at the server the way a user does: environment variables."""
    point_sdks_at(running.server, running.key, monkeypatch)
    return running


@pytest.fixture(scope="module")
def gvisor_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server on gVisor for one test module (tests/runtimes/gvisor_support.py)."""
    from tests.runtimes.gvisor_support import gvisor_server as start

    with start(tmp_path_factory.mktemp("gvisor-server")) as server:
        yield server


@pytest.fixture
def gvisor_api(gvisor_server: ServerProcess, gvisor_key: str) -> Iterator[httpx.Client]:
    """A client of the gVisor server's REST API with its first key."""
    with httpx.Client(
        base_url=gvisor_server.api_url, headers={"X-API-KEY": gvisor_key}, timeout=60
    ) as client:
        yield client


@pytest.fixture
def gvisor_key(gvisor_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's first key, with the official SDK pointed at the server through its
    environment variables, as a user does."""
    assert gvisor_server.first_key
    return point_sdks_at(gvisor_server, gvisor_server.first_key, monkeypatch)
