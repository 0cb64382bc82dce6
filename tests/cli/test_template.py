"""``emberbox template build|list|delete`` end to end: a real build inside gVisor sandboxes, then
a sandbox from the new template through a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emberbox import Sandbox
from emberbox.server.testing import ServerProcess


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emberbox.cli", *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from tests.runtimes.gvisor_support import gvisor_server

    with gvisor_server(tmp_path_factory.mktemp("template-cli")) as srv:
        yield srv


def test_build_list_use_delete(tmp_path: Path, server: ServerProcess) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    (tmp_path / "data.txt").write_text("from the build context\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM base\n"
        "ENV TOOL_MODE=cli\n"
        "RUN echo built-as-$(id -un) > /opt/marker && echo step-output-visible\n"
        "COPY data.txt /opt/data.txt\n"
        "WORKDIR /opt\n"
    )
    built = _cli("template", "build", name, "-f", str(tmp_path / "Dockerfile"))
    try:
        assert built.returncode == 0, built.stderr + built.stdout
        assert "[2/4] RUN" in built.stdout  # each step is announced ...
        assert "step-output-visible" in built.stdout  # ... and its output shown
        assert f"built {name}" in built.stdout

        listed = json.loads(_cli("template", "list", "--json").stdout)
        assert name in {t["name"] for t in listed}

        assert server.first_key is not None
        connection: dict[str, Any] = {
            "api_key": server.first_key,
            "api_url": server.api_url,
            "sandbox_url": server.sandbox_url,
        }
        with Sandbox(template=name, timeout=120, **connection) as sandbox:
            result = sandbox.commands.run("cat marker data.txt; echo $TOOL_MODE; pwd")
            assert result.stdout == "built-as-root\nfrom the build context\ncli\n/opt\n"
    finally:
        deleted = _cli("template", "delete", name)
    assert deleted.returncode == 0, deleted.stderr
    assert name not in {t["name"] for t in json.loads(_cli("template", "list", "--json").stdout)}
    missing = _cli("template", "build", name, "-f", str(tmp_path / "nope"))
    assert missing.returncode == 1 and missing.stderr.startswith("error:")


def test_failed_step_shows_output_and_leaves_nothing(tmp_path: Path) -> None:
    name = f"cli-bad-{uuid.uuid4().hex[:6]}"
    (tmp_path / "Dockerfile").write_text("FROM base\nRUN echo about-to-fail && exit 3\n")
    built = _cli("template", "build", name, "-f", str(tmp_path / "Dockerfile"))
    assert built.returncode == 1
    assert "about-to-fail" in built.stdout + built.stderr
    assert "exit code 3" in built.stderr
    assert name not in {t["name"] for t in json.loads(_cli("template", "list", "--json").stdout)}
