"""``emberbox node`` as a real process for tests: free port, own data dir, output captured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from emberbox.server.testing import free_port


class NodeProcess:
    def __init__(self, data_dir: Path, runtime: str, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.runtime = runtime
        self.port = free_port()
        self.token = "node-secret"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBERBOX_", "E2B_"))}
        env.update(
            EMBERBOX_DATA_DIR=str(self.data_dir),
            EMBERBOX_RUNTIME=self.runtime,
            EMBERBOX_NODE_PORT=str(self.port),
            EMBERBOX_NODE_TOKEN=self.token,
            PYTHONUNBUFFERED="1",
            **self.extra_env,
        )
        return env

    def start(self, timeout_s: float = 60.0) -> str:
        """Start and wait for the ready line; returns it (it reports adopted/removed)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = self.data_dir / "node.out"
        with open(out, "wb") as stdout, open(self.data_dir / "node.log", "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "emberbox.cli", "node"],
                env=self.env(),
                stdout=stdout,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in out.read_text().splitlines():
                if line.startswith("Emberbox node on"):
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = (self.data_dir / "node.log").read_text()[-3000:]
        self.stop()
        raise RuntimeError(f"node did not start:\n{log}")

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

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


def data_dir_sharing_templates(path: Path, templates_from: Path) -> Path:
    """A fresh data dir that sees ``templates_from``'s templates: its sandboxes, records and
    host object names (netns, cgroups, leases) are its own, so tests never touch another
    instance's sandboxes."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("layers", "templates", "images"):
        (templates_from / name).mkdir(parents=True, exist_ok=True)
        link = path / name
        if not link.exists():
            link.symlink_to(templates_from / name)
    return path
