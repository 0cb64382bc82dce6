"""The code-interpreter service as a real process on a free loopback port, and the official
``e2b_code_interpreter`` SDK pointed at it (debug mode: no control plane; ``E2B_SANDBOX_URL``
sends its port-49999 traffic to our port instead of the fixed localhost:49999)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from emberbox.host.ports import free_loopback_port

TOKEN = "interpreter-test-token"
KEEPALIVE = "0.2"  # keepalive lines while a cell is silent must not disturb the SDK


@dataclass
class Service:
    url: str
    process: subprocess.Popen[bytes]
    access_token: str | None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(
    cwd: Path, *args: str, ready_timeout: float = 20.0, env: dict[str, str] | None = None
) -> Service:
    port = free_loopback_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "emberbox.interpreter", "--host", "127.0.0.1"),
            *("--port", str(port), "--cwd", str(cwd), "--keepalive", KEEPALIVE, *args),
        ],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the interpreter exited with {process.returncode} before serving")
        try:
            if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                token = args[args.index("--access-token") + 1] if "--access-token" in args else None
                return Service(url, process, token)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("the interpreter did not answer /health in time")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("interpreter-home"))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def js_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service that also offers JavaScript: our kernelspec installed in a private Jupyter
    path (as the template installs it in the venv), driving the host's node."""
    if not shutil.which("node"):
        pytest.skip("node is not installed (scripts/setup installs it)")
    from emberbox.interpreter.js_kernel import install

    prefix = tmp_path_factory.mktemp("js-kernelspec")
    install(prefix=str(prefix))
    env = {**os.environ, "JUPYTER_PATH": str(prefix / "share" / "jupyter")}
    svc = start_service(tmp_path_factory.mktemp("interpreter-js"), env=env)
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def secured_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("interpreter-secured"), "--access-token", TOKEN)
    yield svc
    svc.stop()


def sdk_env(monkeypatch: pytest.MonkeyPatch, svc: Service) -> None:
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_SANDBOX_URL", svc.url)
    monkeypatch.delenv("E2B_API_URL", raising=False)


def with_token(cls: Any, sandbox: Any, token: str) -> Any:
    """The same debug sandbox, but holding an envd access token as a real create returns one."""
    return cls(
        sandbox_id=sandbox.sandbox_id,
        sandbox_domain=None,
        envd_version=sandbox._envd_version,
        envd_access_token=token,
        connection_config=sandbox.connection_config,
    )


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch, service: Service) -> Any:
    from e2b_code_interpreter import Sandbox

    sdk_env(monkeypatch, service)
    return Sandbox.create()


@pytest.fixture
async def async_sandbox(monkeypatch: pytest.MonkeyPatch, service: Service) -> Any:
    from e2b_code_interpreter import AsyncSandbox

    sdk_env(monkeypatch, service)
    return await AsyncSandbox.create()
