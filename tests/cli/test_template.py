"""``emberbox template build|list|delete`` end to end: a real build inside gVisor sandboxes (on
this node with ``--local``, else through the server's template API), then a sandbox from the new
template through a real server."""

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
    built = _cli("template", "build", name, "-f", str(tmp_path / "Dockerfile"), "--local")
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
    missing = _cli("template", "build", name, "-f", str(tmp_path / "nope"), "--local")
    assert missing.returncode == 1 and missing.stderr.startswith("error:")


def test_failed_step_shows_output_and_leaves_nothing(tmp_path: Path) -> None:
    name = f"cli-bad-{uuid.uuid4().hex[:6]}"
    (tmp_path / "Dockerfile").write_text("FROM base\nRUN echo about-to-fail && exit 3\n")
    built = _cli("template", "build", name, "-f", str(tmp_path / "Dockerfile"), "--local")
    assert built.returncode == 1
    assert "about-to-fail" in built.stdout + built.stderr
    assert "exit code 3" in built.stderr
    assert name not in {t["name"] for t in json.loads(_cli("template", "list", "--json").stdout)}


def test_build_through_the_api(tmp_path: Path, server: ServerProcess) -> None:
    assert server.first_key is not None
    env = {**server.sdk_env(server.first_key), "EMBERBOX_API_URL": server.api_url}
    name = f"cli-api-{uuid.uuid4().hex[:6]}"
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "data.txt").write_text("through the api\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM base\n"
        f"ENV RUN_ID={uuid.uuid4().hex}\n"
        "RUN echo built-as-$(id -un) > /opt/marker && echo step-output-visible\n"
        "COPY --chown=user app /opt/app\n"
        "USER user\n"
        "RUN echo then-as-$(id -un) > /home/user/after\n"
    )
    built = _cli("template", "build", f"{name}:v1", "-f", str(tmp_path / "Dockerfile"), env=env)
    assert built.returncode == 0, built.stderr + built.stdout
    assert "[2/5] RUN echo built-as" in built.stdout and "step-output-visible" in built.stdout
    assert f"built {name}:v1 (template " in built.stdout
    again = _cli("template", "build", f"{name}:v1", "-f", str(tmp_path / "Dockerfile"), env=env)
    assert again.returncode == 0 and "(cached)" in again.stdout, again.stdout

    connection: dict[str, Any] = {
        "api_key": server.first_key,
        "api_url": server.api_url,
        "sandbox_url": server.sandbox_url,
    }
    with Sandbox(template=f"{name}:v1", timeout=120, **connection) as sandbox:
        result = sandbox.commands.run("cat /opt/marker /opt/app/data.txt after; whoami; "
                                      "stat -c %U /opt/app/data.txt")  # fmt: skip
        assert result.stdout == ("built-as-root\nthrough the api\nthen-as-user\nuser\nuser\n")

    (tmp_path / "Dockerfile").write_text("FROM base\nRUN echo api-fails && exit 4\n")
    failed = _cli("template", "build", name, "-f", str(tmp_path / "Dockerfile"), env=env)
    assert failed.returncode == 1 and "exit code 4" in failed.stderr, failed.stderr
    assert "api-fails" in failed.stdout
