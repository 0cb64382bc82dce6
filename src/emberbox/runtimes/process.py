"""``ProcessRuntime``: one real ``emberbox-envd`` process per sandbox on 127.0.0.1.

For development and tests only. **There is no isolation**: commands run as the node's own user
on the host, every sandbox shares the host's network and filesystem, and user ports are host ports
(two sandboxes cannot both listen on 8000). cpu/memory figures are accounted, not enforced.
It exists so the API, proxy, node and SDKs can be exercised end to end without gVisor.

Each sandbox's PID, port and process start time are kept in ``<data_dir>/process-runtime/<id>.json``
so a restarted node finds (and can kill) the sandboxes it started before.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import getpass
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..envd_client.handshake import EnvdDefaults
from ..host.errors import HostError
from ..host.files import write_atomic
from ..host.locks import KeyedLock
from ..host.ports import free_loopback_port
from ..host.processes import dir_size, kill_tree, start_time, usage
from ..vocabulary import check_sandbox_id, e2b_env
from .base import (
    UNKNOWN_DEFAULTS,
    Capabilities,
    CapabilityMissing,
    Runtime,
    RuntimeSandbox,
    SandboxGone,
    SandboxSpec,
    SandboxStats,
    SandboxStatus,
)

log = logging.getLogger("emberbox.process")


@dataclass(frozen=True)
class _Record:
    sandbox_id: str
    template_id: str
    pid: int
    port: int
    started: int
    cpu_count: int
    memory_mb: int
    disk_mb: int


class ProcessRuntime(Runtime):
    """Dev/test runtime: real envd processes, no isolation (see module docstring)."""

    name = "process"
    capabilities = Capabilities(no_internet=False)
    isolation = False

    def __init__(self, data_dir: Path, envd_command: Sequence[str] | None = None) -> None:
        self.state_dir = data_dir / "process-runtime"
        self.homes = data_dir / "process-sandboxes"
        self.envd_command = list(envd_command or [sys.executable, "-m", "emberbox.envd"])
        self._cpu_seen: dict[str, tuple[float, float]] = {}
        self._locks = KeyedLock()

    # ---- records --------------------------------------------------------------------------

    def _path(self, sandbox_id: str) -> Path:
        return self.state_dir / f"{check_sandbox_id(sandbox_id)}.json"

    def _load(self, sandbox_id: str) -> _Record | None:
        try:
            return _Record(**json.loads(self._path(sandbox_id).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _alive(self, rec: _Record) -> bool:
        return start_time(rec.pid) == rec.started

    def _view(self, rec: _Record, defaults: EnvdDefaults = UNKNOWN_DEFAULTS) -> RuntimeSandbox:
        return RuntimeSandbox(
            sandbox_id=rec.sandbox_id,
            template_id=rec.template_id,
            address="127.0.0.1",
            envd_port=rec.port,
            status=SandboxStatus.RUNNING if self._alive(rec) else SandboxStatus.STOPPED,
            defaults=defaults,
        )

    # ---- lifecycle ------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> RuntimeSandbox:
        async with self._locks.hold(spec.sandbox_id):
            if spec.snapshot is not None:
                raise CapabilityMissing("the process runtime cannot start from snapshots")
            if spec.volumes:
                raise CapabilityMissing("the process runtime cannot mount volumes")
            self.state_dir.mkdir(parents=True, exist_ok=True)
            if self._path(spec.sandbox_id).exists():
                raise ValueError(f"sandbox {spec.sandbox_id} already exists")
            home = self.homes / spec.sandbox_id
            home.mkdir(parents=True, exist_ok=True)
            port = free_loopback_port()
            proc = self._spawn(spec, port, home)
            rec = _Record(
                sandbox_id=spec.sandbox_id,
                template_id=spec.template_id,
                pid=proc.pid,
                port=port,
                started=start_time(proc.pid) or 0,
                cpu_count=spec.cpu_count,
                memory_mb=spec.memory_mb,
                disk_mb=spec.disk_mb,
            )
            write_atomic(self._path(spec.sandbox_id), json.dumps(rec.__dict__))
            env = {**e2b_env(spec.sandbox_id, spec.template_id), **spec.envs}
            return self._view(rec, EnvdDefaults(user=getpass.getuser(), workdir=str(home), env=env))

    def _spawn(self, spec: SandboxSpec, port: int, home: Path) -> subprocess.Popen[bytes]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            **e2b_env(spec.sandbox_id, spec.template_id),
        }
        # Commands are logins on the host itself, and kill() SIGKILLs the whole session, which
        # can catch one mid-profile: with the host's HOME it left the host's own state behind
        # (pyenv's rehash lock, from root's ~/.bashrc, made every later root login on the host
        # wait 60 s, and the tests' commands with it). So every user's home is the sandbox's
        # directory, and no standby login shells run (a fresh login per command, as before).
        argv = [*self.envd_command, "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--standby-shells", "0", "--home", str(home)]
        out = open(home.parent / f"{spec.sandbox_id}.envd.log", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(
                argv,
                cwd=home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # survives a node restart; killed only by kill()
            )
        finally:
            out.close()

    async def alive(self, sandbox_id: str) -> bool:
        rec = self._load(sandbox_id)
        return rec is not None and self._alive(rec)

    async def boot_log(self, sandbox_id: str) -> str:
        path = self.homes / f"{sandbox_id}.envd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    async def kill(self, sandbox_id: str) -> bool:
        async with self._locks.hold(sandbox_id):
            rec = self._load(sandbox_id)
            home = self.homes / check_sandbox_id(sandbox_id)
            if rec is None and not home.exists():
                return False
            if rec is not None and self._alive(rec):
                await asyncio.to_thread(kill_tree, rec.pid)
            self._path(sandbox_id).unlink(missing_ok=True)
            self._cpu_seen.pop(sandbox_id, None)
            await asyncio.to_thread(shutil.rmtree, home, True)
            with contextlib.suppress(OSError):
                (self.homes / f"{sandbox_id}.envd.log").unlink()
            return True

    async def list(self) -> builtins.list[RuntimeSandbox]:
        out = []
        for path in sorted(self.state_dir.glob("*.json")):
            rec = self._load(path.stem)
            if rec is not None:
                out.append(self._view(rec))
        return out

    async def stats(self, sandbox_id: str) -> SandboxStats:
        rec = self._load(sandbox_id)
        if rec is None or not self._alive(rec):
            raise SandboxGone(f"sandbox {sandbox_id} does not run")
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

    async def cleanup_orphans(self, keep: Sequence[str]) -> builtins.list[str]:
        keep_set = set(keep)
        removed = []
        for path in sorted(self.state_dir.glob("*.json")):
            if path.stem in keep_set:
                continue
            try:
                if await self.kill(path.stem):
                    removed.append(path.stem)
            except (HostError, OSError):  # left for the next clean-up; the others still go
                log.exception("removing leftover sandbox %s failed", path.stem)
        return removed
