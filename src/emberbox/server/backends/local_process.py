"""``LocalProcessBackend``: one real ``emberbox-envd`` process per sandbox on 127.0.0.1.

For development and tests only. **There is no isolation**: commands run as the server's own user
on the host, every sandbox shares the host's network and filesystem, and user ports are host ports
(two sandboxes cannot both listen on 8000). cpu/memory figures are accounted, not enforced.
It exists so the API, proxy and SDKs can be exercised end to end without gVisor.

Each sandbox's PID, port and process start time are kept in ``<data_dir>/local-backend/<id>.json``
so a restarted server finds (and can kill) the sandboxes it started before.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from ...runtimes.base import SandboxStats
from .base import BackendCapabilities, BackendError, BackendSandbox, BackendSpec, NotSupported
from .procs import dir_size, kill_tree, start_time, usage

READY_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class _Record:
    sandbox_id: str
    pid: int
    port: int
    started: int
    envd_version: str
    cpu_count: int
    memory_mb: int
    disk_mb: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalProcessBackend:
    """Dev/test backend: real envd processes, no isolation (see module docstring)."""

    name = "local"
    capabilities = BackendCapabilities(
        pause=False, no_internet=False, egress_rules=False, isolation=False
    )

    def __init__(self, data_dir: Path, envd_command: Sequence[str] | None = None) -> None:
        self.state_dir = data_dir / "local-backend"
        self.homes = data_dir / "local-sandboxes"
        self.envd_command = list(envd_command or [sys.executable, "-m", "emberbox.envd"])
        self._client: httpx.AsyncClient | None = None
        self._cpu_seen: dict[str, tuple[float, float]] = {}

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.homes.mkdir(parents=True, exist_ok=True)
        # No keep-alive: a later sandbox may reuse this address (port or IP lease), and a
        # pooled connection to the dead envd would fail its first request.
        self._client = httpx.AsyncClient(
            timeout=10.0, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None, "backend not started"
        return self._client

    # ---- records --------------------------------------------------------------------------

    def _path(self, sandbox_id: str) -> Path:
        return self.state_dir / f"{sandbox_id}.json"

    def _load(self, sandbox_id: str) -> _Record | None:
        try:
            return _Record(**json.loads(self._path(sandbox_id).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _alive(self, rec: _Record) -> bool:
        return start_time(rec.pid) == rec.started

    def _view(self, rec: _Record) -> BackendSandbox:
        return BackendSandbox(
            sandbox_id=rec.sandbox_id,
            envd_url=f"http://127.0.0.1:{rec.port}",
            host="127.0.0.1",
            envd_version=rec.envd_version,
        )

    # ---- lifecycle ------------------------------------------------------------------------

    async def create(self, spec: BackendSpec) -> BackendSandbox:
        home = self.homes / spec.sandbox_id
        home.mkdir(parents=True, exist_ok=True)
        last_error = "envd did not start"
        for _attempt in range(3):  # a port picked by _free_port can be taken before envd binds
            port = _free_port()
            proc = self._spawn(spec, port, home)
            started = start_time(proc.pid)
            rec = _Record(
                sandbox_id=spec.sandbox_id,
                pid=proc.pid,
                port=port,
                started=started or 0,
                envd_version="",
                cpu_count=spec.cpu_count,
                memory_mb=spec.memory_mb,
                disk_mb=spec.disk_mb,
            )
            self._path(spec.sandbox_id).write_text(json.dumps(rec.__dict__))
            try:
                version = await self._wait_ready(proc, port)
                await self._init(port, spec, home)
            except BackendError as e:
                last_error = str(e)
                kill_tree(proc.pid)
                await asyncio.to_thread(proc.wait)
                continue
            rec = _Record(**{**rec.__dict__, "envd_version": version})
            self._path(spec.sandbox_id).write_text(json.dumps(rec.__dict__))
            return self._view(rec)
        self._path(spec.sandbox_id).unlink(missing_ok=True)
        shutil.rmtree(home, ignore_errors=True)
        raise BackendError(last_error)

    def _spawn(self, spec: BackendSpec, port: int, home: Path) -> subprocess.Popen[bytes]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "E2B_SANDBOX": "true",
            "E2B_SANDBOX_ID": spec.sandbox_id,
            "E2B_TEMPLATE_ID": spec.template_id,
        }
        log = open(home.parent / f"{spec.sandbox_id}.envd.log", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(
                [*self.envd_command, "--host", "127.0.0.1", "--port", str(port)],
                cwd=home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # survives a server restart; killed only by kill()
            )
        finally:
            log.close()

    async def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BackendError(f"envd exited with status {proc.returncode} while starting")
            try:
                r = await self.client.get(f"http://127.0.0.1:{port}/health")
                if r.status_code == 204:
                    return str(r.headers.get("x-envd-version", "0.6.13"))
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        raise BackendError(f"envd not ready after {READY_TIMEOUT_S:.0f}s")

    async def _init(self, port: int, spec: BackendSpec, home: Path) -> None:
        body = {
            "envVars": {
                "E2B_SANDBOX": "true",
                "E2B_SANDBOX_ID": spec.sandbox_id,
                "E2B_TEMPLATE_ID": spec.template_id,
                **spec.env_vars,
            },
            "accessToken": spec.access_token,
            "defaultUser": getpass.getuser(),
            "defaultWorkdir": str(home),
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        }
        try:
            r = await self.client.post(f"http://127.0.0.1:{port}/init", json=body)
        except httpx.TransportError as e:
            raise BackendError(f"envd /init failed: {e}") from e
        if r.status_code != 204:
            raise BackendError(f"envd /init answered {r.status_code}: {r.text[:200]}")

    async def kill(self, sandbox_id: str) -> None:
        rec = self._load(sandbox_id)
        if rec is not None and self._alive(rec):
            await asyncio.to_thread(kill_tree, rec.pid)
        self._path(sandbox_id).unlink(missing_ok=True)
        self._cpu_seen.pop(sandbox_id, None)
        home = self.homes / sandbox_id
        await asyncio.to_thread(shutil.rmtree, home, True)
        with contextlib.suppress(OSError):
            (self.homes / f"{sandbox_id}.envd.log").unlink()

    async def list(self) -> list[BackendSandbox]:
        out = []
        for path in self.state_dir.glob("*.json"):
            rec = self._load(path.stem)
            if rec is not None and rec.envd_version and self._alive(rec):
                out.append(self._view(rec))
        return out

    async def stats(self, sandbox_id: str) -> SandboxStats | None:
        rec = self._load(sandbox_id)
        if rec is None or not self._alive(rec):
            return None
        rss, cpu_s = await asyncio.to_thread(usage, rec.pid)
        now = time.monotonic()
        prev = self._cpu_seen.get(sandbox_id)
        self._cpu_seen[sandbox_id] = (now, cpu_s)
        pct = 0.0
        if prev is not None and now > prev[0]:
            pct = max(0.0, (cpu_s - prev[1]) / (now - prev[0]) * 100.0 / rec.cpu_count)
        disk = await asyncio.to_thread(dir_size, self.homes / sandbox_id)
        return SandboxStats(
            cpu_count=rec.cpu_count,
            cpu_used_pct=round(pct, 2),
            mem_used=rss,
            mem_total=rec.memory_mb * 1024 * 1024,
            disk_used=disk,
            disk_total=rec.disk_mb * 1024 * 1024,
        )

    async def set_timeout(self, sandbox_id: str, timeout_s: int) -> None:
        return None  # end times are enforced by the server's reaper alone

    async def pause(self, sandbox_id: str) -> None:
        raise NotSupported("the local backend cannot pause sandboxes")

    async def resume(self, sandbox_id: str) -> BackendSandbox:
        raise NotSupported("the local backend cannot resume sandboxes")
