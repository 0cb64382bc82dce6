"""The official npm ``e2b`` SDK does the same smoke round against a real server (its stateful
calls run on gVisor, in ``test_stateful.py``)."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.api.conftest import Running
from tests.api.npm import JS, needs_node, run_script

pytestmark = needs_node


def test_js_sdk_smoke_round(running: Running, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    out = run_script(JS / "smoke.mjs", running.server, running.key, tmp_path, SMOKE_TAG=tag)
    home_line = out["stdout"].splitlines()
    assert home_line[0] == "from-js" and home_line[1].endswith(out["id"])
    assert out["read"] == "written by js"
    assert out["listed"] == [out["id"]]
    assert out["info"] == {"js": tag}
    assert out["connected"] == "connected\n"
    assert out["killed"] is True and out["runningAfterKill"] is False
    assert out["killAgain"] is False
    assert running.server.sandbox_states()[out["id"]] == ("killed", "killed by user")
