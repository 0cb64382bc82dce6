"""The official npm ``e2b`` SDK does the same smoke round against a real server.

The package comes from ``tests/npm`` (pinned by its lock file, installed by ``scripts/setup``);
``EMBERBOX_TEST_NODE_MODULES`` may point at another ``node_modules`` holding ``e2b``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.api.conftest import Running

NODE_MODULES = os.environ.get("EMBERBOX_TEST_NODE_MODULES") or str(
    Path(__file__).parents[1] / "npm" / "node_modules"
)

pytestmark = pytest.mark.skipif(not shutil.which("node"), reason="Node.js is not installed")


def test_js_sdk_smoke_round(running: Running, tmp_path: Path) -> None:
    assert Path(NODE_MODULES, "e2b").is_dir(), "run scripts/setup: the npm SDK is not installed"
    script = tmp_path / "smoke.mjs"
    shutil.copy(Path(__file__).with_name("js") / "smoke.mjs", script)
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    tag = uuid.uuid4().hex
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("E2B_")},
        **running.server.sdk_env(running.key),
        "SMOKE_TAG": tag,
    }
    proc = subprocess.run(
        ["node", str(script)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    home_line = out["stdout"].splitlines()
    assert home_line[0] == "from-js" and home_line[1].endswith(out["id"])
    assert out["read"] == "written by js"
    assert out["listed"] == [out["id"]]
    assert out["info"] == {"js": tag}
    assert out["connected"] == "connected\n"
    assert out["killed"] is True and out["runningAfterKill"] is False
    assert out["killAgain"] is False
    assert running.server.sandbox_states()[out["id"]] == ("killed", "killed by user")
