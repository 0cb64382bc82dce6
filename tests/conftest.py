"""Fixtures shared by every suite: real envd processes on loopback."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from emberbox.host.ports import free_loopback_port
from tests import lanes

# Servers and nodes made in-process read EMBERBOX_* from here: the warm pool is opt-in in tests
# (its background sandboxes would show up in every leak inventory).
os.environ.setdefault("EMBERBOX_WARM_POOL", "0")

ENVD_PORT = 49983  # the E2B SDK in debug mode talks to localhost:49983, fixed


@dataclass
class EnvdProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    access_token: str | None = None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_envd(port: int, *args: str, ready_timeout: float = 15.0) -> EnvdProcess:
    """Start ``emberbox-envd`` as a real process and wait until /health answers 204."""
    process = subprocess.Popen(
        [sys.executable, "-m", "emberbox.envd", "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=None,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"envd exited with {process.returncode} before becoming healthy")
        try:
            if httpx.get(f"{url}/health", timeout=0.5).status_code == 204:
                token = args[args.index("--access-token") + 1] if "--access-token" in args else None
                return EnvdProcess(url, port, process, token)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("envd did not become healthy in time")


@pytest.fixture(scope="session")
def sandbox_user() -> str:
    """The sandbox convention is a user named ``user``; CI creates it (see .ci/run)."""
    try:
        pwd.getpwnam("user")
    except KeyError:
        pytest.skip("no 'user' account on this host (.ci/run creates it)")
    return "user"


@pytest.fixture(scope="session")
def envd_debug(sandbox_user: str) -> Iterator[EnvdProcess]:
    """envd on localhost:49983 without a token, as the official SDK's debug mode expects."""
    envd = start_envd(ENVD_PORT)
    yield envd
    envd.stop()


@pytest.fixture
def envd_factory() -> Iterator[Callable[..., EnvdProcess]]:
    """Start extra envd instances (own port, own flags) that are stopped after the test."""
    started: list[EnvdProcess] = []

    def make(*args: str) -> EnvdProcess:
        envd = start_envd(free_loopback_port(), *args)
        started.append(envd)
        return envd

    yield make
    for envd in started:
        envd.stop()


@pytest.fixture
def e2b_debug_env(monkeypatch: pytest.MonkeyPatch, envd_debug: EnvdProcess) -> EnvdProcess:
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.delenv("E2B_SANDBOX_URL", raising=False)
    monkeypatch.delenv("E2B_API_URL", raising=False)
    return envd_debug


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without workers)
        config.pluginmanager.register(lanes.LaneTimes(), "emberbox-lane-times")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    lanes.check(items)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> lanes.LaneScheduling | None:
    """Whenever xdist hands out tests (every ``--dist`` but ``each``), the files that share a
    host resource stay in one worker."""
    if config.getvalue("dist") not in ("no", "each"):
        return lanes.LaneScheduling(config, log)
    return None
