"""Runs a script with the official npm SDKs (``e2b``, ``@e2b/code-interpreter``), configured
only through the E2B_* variables a user sets, and returns the one JSON line it prints last.

The package comes from ``tests/npm`` (pinned by its lock file, installed by ``scripts/setup``);
``EMBERBOX_TEST_NODE_MODULES`` may point at another ``node_modules`` holding ``e2b``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from emberbox.server.testing import ServerProcess

NODE_MODULES = os.environ.get("EMBERBOX_TEST_NODE_MODULES") or str(
    Path(__file__).parents[1] / "npm" / "node_modules"
)

JS = Path(__file__).with_name("js")  # this directory's scripts

needs_node = pytest.mark.skipif(not shutil.which("node"), reason="Node.js is not installed")


def run_script(
    source: Path,
    server: ServerProcess,
    key: str,
    tmp_path: Path,
    timeout_s: float = 120,
    **env: str,
) -> dict[str, Any]:
    """``env`` adds variables the script reads (e.g. ``SMOKE_TAG``)."""
    assert Path(NODE_MODULES, "e2b").is_dir(), "run scripts/setup: the npm SDK is not installed"
    script = tmp_path / source.name
    shutil.copy(source, script)
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    proc = subprocess.run(
        ["node", str(script)],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("E2B_")},
            **server.sdk_env(key),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out
