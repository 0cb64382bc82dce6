"""The official ``e2b`` npm SDK (Node) does a smoke round against our envd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EnvdProcess

NPM_DIR = Path(__file__).parent.parent / "npm"


def test_npm_sdk_smoke_round(envd_debug: EnvdProcess) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed on this host")
    if not (NPM_DIR / "node_modules" / "e2b").is_dir():
        pytest.fail("tests/npm/node_modules is missing: run `npm ci` there (.ci/run does)")
    completed = subprocess.run(
        [node, "envd_smoke.mjs"],
        cwd=NPM_DIR,
        env={**os.environ, "E2B_DEBUG": "true"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == {
        "ok": True,
        "stdout": "from-node-42",
    }
