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
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..host.ports import free_loopback_port
from ..host.processes import kill_tree, start_time

_KEY_RE = re.compile(r"e2b_[0-9a-f]{40}")


def _launch(
    argv: list[str], env: Mapping[str, str], out: Path, log: Path
) -> subprocess.Popen[bytes]:
    """Start ``python -m emberbox.cli ARGV``: stdout to ``out`` (read for its ready line),
    stderr appended to ``log``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as stdout, open(log, "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "emberbox.cli", *argv],
            env=dict(env),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )


def _wait_for(proc: subprocess.Popen[bytes], out: Path, marker: str, timeout_s: float) -> str:
    """The process's stdout once ``marker`` appears in it; "" if it exited or timed out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = out.read_text()
        if marker in text:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    return ""


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (the process drains and exits), SIGKILL after 30 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("EMBERBOX_", "E2B_"))}


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
        self.api_port = int(self.extra_env.get("EMBERBOX_API_PORT") or free_loopback_port())
        self.proxy_port = int(self.extra_env.get("EMBERBOX_PROXY_PORT") or free_loopback_port())
        self.proc: subprocess.Popen[bytes] | None = None
        self.first_key: str | None = None

    @property
    def tls(self) -> bool:
        """Whether ``env`` turns TLS on (both listeners then speak only HTTPS)."""
        return bool(self.extra_env.get("EMBERBOX_TLS") or self.extra_env.get("EMBERBOX_TLS_CERT"))

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def api_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.api_port}"

    @property
    def sandbox_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.proxy_port}"

    @property
    def local_ca(self) -> Path:
        """The CA ``EMBERBOX_TLS=local`` makes (``bundle.pem`` beside it adds the system's)."""
        return self.data_dir / "tls" / "ca.pem"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'emberbox.db'}"

    def env(self) -> dict[str, str]:
        env = _base_env()
        env.update(
            EMBERBOX_DATA_DIR=str(self.data_dir),
            EMBERBOX_API_PORT=str(self.api_port),
            EMBERBOX_PROXY_PORT=str(self.proxy_port),
            EMBERBOX_DATABASE_URL=self.database_url,
            EMBERBOX_BACKEND="local",  # tests opt in to gVisor explicitly via env
            EMBERBOX_WARM_POOL="0",  # and to the warm pool: its sandboxes would be noise
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def sdk_env(self, key: str) -> dict[str, str]:
        """What a user exports to point the official SDKs at this server: with TLS, sandboxes
        are reached by name (``E2B_DOMAIN``) and the local CA is trusted, as the banner says."""
        env = {
            "E2B_API_URL": self.api_url,
            "E2B_API_KEY": key,
            "E2B_VOLUME_API_URL": self.api_url,  # the volume content API is ours too
        }
        if not self.tls:
            return env | {"E2B_SANDBOX_URL": self.sandbox_url}
        env["E2B_DOMAIN"] = self.extra_env["EMBERBOX_DOMAIN"]
        if self.extra_env.get("EMBERBOX_TLS") == "local":
            env["SSL_CERT_FILE"] = str(self.local_ca.with_name("bundle.pem"))
            env["NODE_EXTRA_CA_CERTS"] = str(self.local_ca)
        return env

    def start(self, timeout_s: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out, log = self.log_dir / "server.out", self.log_dir / "server.log"
        self.proc = _launch(["server"], self.env(), out, log)
        text = _wait_for(self.proc, out, "export E2B_API_KEY=", timeout_s)
        if text:
            found = _KEY_RE.search(text.split("export E2B_API_KEY=")[0])
            if found and self.first_key is None:
                self.first_key = found.group(0)
            return
        self.stop()
        raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None

    def sigkill(self) -> None:
        """A crash: no drain, no shutdown; what it was doing is left half-done."""
        assert self.proc is not None
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


class NodeProcess:
    """One ``emberbox node`` on a free loopback port with a shared token, state in ``data_dir``.

    **Parameters:** data_dir - its ``EMBERBOX_DATA_DIR``; runtime - ``EMBERBOX_RUNTIME``;
    env - (optional) more ``EMBERBOX_*`` settings.
    """

    def __init__(self, data_dir: Path, runtime: str, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.runtime = runtime
        self.port = free_loopback_port()
        self.token = secrets.token_hex(16)
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = _base_env()
        env.update(
            EMBERBOX_DATA_DIR=str(self.data_dir),
            EMBERBOX_RUNTIME=self.runtime,
            EMBERBOX_WARM_POOL="0",
            EMBERBOX_NODE_PORT=str(self.port),
            EMBERBOX_NODE_TOKEN=self.token,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 60.0) -> str:
        """Start it and return its ready line (which says what it adopted and removed)."""
        out, log = self.data_dir / "node.out", self.data_dir / "node.log"
        self.proc = _launch(["node"], self.env(), out, log)
        text = _wait_for(self.proc, out, "Emberbox node on", timeout_s)
        if text:
            return next(line for line in text.splitlines() if "Emberbox node on" in line)
        self.stop()
        raise RuntimeError(f"node did not start:\n{log.read_text()[-3000:]}")

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None


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
    """Drop the test database, ending its other sessions (``scripts/postgres-test-db`` lets
    the test role end an autovacuum worker's; tried again for a moment where it cannot)."""
    import asyncpg

    name = urlsplit(url).path.lstrip("/")
    for attempt in range(5):
        try:
            asyncio.run(_pg(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
            if attempt == 4:
                raise
            time.sleep(0.5)
