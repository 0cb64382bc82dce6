"""The CLI as a user runs it: a real ``emberbox`` process configured only by what the module's
``server`` fixture printed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from emberbox.server.testing import ServerProcess

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(server: ServerProcess) -> Cli:
    """``cli("sandbox", "list")`` runs ``emberbox sandbox list`` against ``server``."""
    assert server.first_key is not None
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("EMBERBOX_", "E2B_"))},
        **server.sdk_env(server.first_key),
    }

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "emberbox.cli", *args],
            capture_output=True, text=True, timeout=120, env=env, input=stdin,
        )  # fmt: skip

    return run
