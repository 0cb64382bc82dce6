"""Run a real ``emberbox server`` process for tests and benchmarks.

Not a mock: a separate process with its own database, listeners and sandboxes, driven over HTTP
exactly as users and SDKs drive it. Stopping it leaves sandboxes running (as in production);
:meth:`ServerProcess.kill_sandboxes` removes every envd process it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..host.processes import kill_tree, start_time

_KEY_RE = re.compile(r"e2b_[0-9a-f]{40}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server on free loopback ports, state in ``data_dir``.

    **Parameters:**
    * data_dir - the server's ``EMBERBOX_DATA_DIR`` (SQLite file and local sandboxes).
    * database_url - (optional) ``EMBERBOX_DATABASE_URL``; default SQLite in data_dir.
    * env - (optional) more ``EMBERBOX_*`` settings (limits, capacity, templates).
    * log_dir - (optional) where server.out/server.log go; default data_dir.
    """

    def __init__(
        self,
        data_dir: Path,
        database_url: str = "",
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir or data_dir
        self.database_url = database_url
        self.extra_env = dict(env or {})
        self.api_port = free_port()
        self.proxy_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.first_key: str | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'emberbox.db'}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBERBOX_", "E2B_"))}
        env.update(
            EMBERBOX_DATA_DIR=str(self.data_dir),
            EMBERBOX_API_PORT=str(self.api_port),
            EMBERBOX_PROXY_PORT=str(self.proxy_port),
            EMBERBOX_DATABASE_URL=self.database_url,
            EMBERBOX_BACKEND="local",  # tests opt in to gVisor explicitly via env
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def sdk_env(self, key: str) -> dict[str, str]:
        """What a user exports to point the official SDKs at this server."""
        return {
            "E2B_API_URL": self.api_url,
            "E2B_SANDBOX_URL": self.sandbox_url,
            "E2B_API_KEY": key,
        }

    def start(self, timeout_s: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = self.log_dir / "server.out"
        err = open(self.log_dir / "server.log", "ab")  # noqa: SIM115
        with open(out, "wb") as stdout:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "emberbox.cli", "server"],
                env=self.env(),
                stdout=stdout,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        err.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = out.read_text()
            if "export E2B_API_KEY=" in text:
                found = _KEY_RE.search(text.split("export E2B_API_KEY=")[0])
                if found and self.first_key is None:
                    self.first_key = found.group(0)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = (self.log_dir / "server.log").read_text()[-3000:]
        self.stop()
        raise RuntimeError(f"server did not start:\n{log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def create_key(self, team: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "emberbox.cli", "keys", "create", "--team", team],
            env=self.env(),
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
        found = _KEY_RE.search(out)
        assert found, out
        return found.group(0)

    def live_sandbox_processes(self) -> dict[str, int]:
        """Sandbox ID → envd PID for every process-runtime sandbox whose envd still runs."""
        alive = {}
        for path in (self.data_dir / "process-runtime").glob("*.json"):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if start_time(rec["pid"]) == rec["started"]:
                alive[path.stem] = rec["pid"]
        return alive

    def kill_sandboxes(self) -> None:
        for pid in self.live_sandbox_processes().values():
            kill_tree(pid)

    def sandbox_states(self) -> dict[str, tuple[str, str | None]]:
        """Sandbox ID → (state, end reason), read straight from the database."""
        return asyncio.run(_sandbox_states(self.db_url))


async def _sandbox_states(url: str) -> dict[str, tuple[str, str | None]]:
    from sqlalchemy import select

    from .db.engine import make_engine
    from .db.models import Sandbox

    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(Sandbox.id, Sandbox.state, Sandbox.end_reason))
            return {r.id: (r.state, r.end_reason) for r in rows}
    finally:
        await engine.dispose()


def _plain_pg(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _pg(url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(_plain_pg(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_postgres_database(base_url: str) -> str:
    """A fresh, empty database next to ``base_url``'s; returns its SQLAlchemy URL."""
    name = "emberbox_test_" + secrets.token_hex(4)
    asyncio.run(_pg(base_url, f'CREATE DATABASE "{name}"'))
    return with_database(base_url, name)


def drop_postgres_database(base_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    asyncio.run(_pg(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
