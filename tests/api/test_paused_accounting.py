"""A paused sandbox holds no CPU or memory but disk: its resume is admitted like a create
(refused past the team cap, changing nothing), and its saved memory is shown and counted in the
team's snapshot-disk quota with the snapshots."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox, SandboxState

from emberbox import Sandbox as Ours
from emberbox.server.testing import ServerProcess
from emberbox.templates.store import Template
from emberbox.vocabulary import DEFAULT_MEMORY_MB
from tests.node.support import data_dir_sharing_templates
from tests.runtimes.conftest import base_template
from tests.runtimes.gvisor_support import DATA_DIR

__all__ = ["base_template"]


def _server(tmp_path: Path, **limits: str) -> Iterator[ServerProcess]:
    """A gVisor server of its own (own data dir and node) with these limits."""
    server = ServerProcess(
        data_dir_sharing_templates(tmp_path / "data", DATA_DIR),
        env={"EMBERBOX_BACKEND": "gvisor", **limits},
    )
    server.start(timeout_s=60)
    yield server
    server.stop()


@pytest.fixture
def capped(tmp_path: Path, base_template: Template) -> Iterator[ServerProcess]:
    yield from _server(tmp_path, EMBERBOX_MAX_SANDBOXES_PER_TEAM="1")


@pytest.fixture
def room_for_one(tmp_path: Path, base_template: Template) -> Iterator[ServerProcess]:
    """A node whose memory holds one sandbox of the default size."""
    yield from _server(tmp_path, EMBERBOX_NODE_MEMORY_MB=str(DEFAULT_MEMORY_MB))


@pytest.fixture
def one_byte(tmp_path: Path, base_template: Template) -> Iterator[ServerProcess]:
    yield from _server(tmp_path, EMBERBOX_MAX_SNAPSHOT_BYTES_PER_TEAM="1")


def _use(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> httpx.Client:
    """Point the official SDK at ``server`` as a user does (E2B_* variables); a client of its
    REST API for what the SDK does not show (status codes, bodies)."""
    assert server.first_key
    for name, value in server.sdk_env(server.first_key).items():
        monkeypatch.setenv(name, value)
    return httpx.Client(base_url=server.api_url, headers={"X-API-KEY": server.first_key})


def _refused_resume_changes_nothing(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch, status: int, reason: str
) -> None:
    """A paused sandbox, then another that takes what the first's resume would need (a
    paused one counts toward neither the team's cap nor the node's memory): the resume
    answers ``status`` naming ``reason``, the sandbox stays paused with its files, and
    resumes once the other is gone."""
    api = _use(server, monkeypatch)
    paused = Sandbox.create(timeout=120)
    other: Sandbox | None = None
    try:
        paused.files.write("/home/user/kept.txt", "before the pause")
        paused.pause()
        other = Sandbox.create(timeout=120)

        refused = api.post(f"/sandboxes/{paused.sandbox_id}/connect", json={"timeout": 60})
        assert refused.status_code == status, refused.text
        body = refused.json()
        assert body["code"] == status and "stays paused" in body["message"], body
        assert reason in body["message"], body
        assert paused.get_info().state == SandboxState.PAUSED

        other.kill()
        resumed = Sandbox.connect(paused.sandbox_id, timeout=60)
        assert resumed.files.read("/home/user/kept.txt") == "before the pause"
        assert resumed.get_info().state == SandboxState.RUNNING
    finally:
        paused.kill()
        if other is not None:
            other.kill()


def test_a_resume_past_the_team_cap_is_refused_and_changes_nothing(
    capped: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refused_resume_changes_nothing(capped, monkeypatch, 429, "concurrent sandbox limit")


def test_a_resume_onto_a_full_node_is_refused_and_changes_nothing(
    room_for_one: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refused_resume_changes_nothing(room_for_one, monkeypatch, 503, "out of memory")


def test_the_end_time_pause_is_never_refused_for_the_quota(
    one_byte: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quota refuses a caller's pause, never the end time's of an ``on_timeout: pause``
    sandbox: that pause keeps the user's work, where refusing it would leave the sandbox
    running past its end."""
    _use(one_byte, monkeypatch)
    full = Sandbox.create(timeout=120)
    ending: Sandbox | None = None
    try:
        full.pause()  # the team is at its quota now
        ending = Sandbox.create(timeout=5, lifecycle={"on_timeout": "pause"})
        ending.files.write("/home/user/work.txt", "kept")
        deadline = time.monotonic() + 30
        while (state := ending.get_info().state) != SandboxState.PAUSED:
            assert state == SandboxState.RUNNING, state
            assert time.monotonic() < deadline, "not paused at its end time"
            time.sleep(0.2)
        resumed = Sandbox.connect(ending.sandbox_id, timeout=60)
        assert resumed.files.read("/home/user/work.txt") == "kept"
    finally:
        full.kill()
        if ending is not None:
            ending.kill()


def test_paused_memory_is_shown_and_counted_in_the_snapshot_quota(
    one_byte: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a quota of one byte: the first pause is admitted (nothing saved yet), then the
    team is at its quota: another pause and a snapshot are refused and change nothing; killing
    the paused sandbox frees its disk and a pause is admitted again."""
    api = _use(one_byte, monkeypatch)
    first, second = Sandbox.create(timeout=120), Sandbox.create(timeout=120)
    try:
        first.pause()
        detail = api.get(f"/sandboxes/{first.sandbox_id}").json()
        assert detail["state"] == "paused" and detail["pausedBytes"] > 1 << 20, detail
        listed = {s["sandboxID"]: s for s in api.get("/v2/sandboxes").json()}
        assert listed[first.sandbox_id]["pausedBytes"] == detail["pausedBytes"]
        assert "pausedBytes" not in listed[second.sandbox_id], "a running one has none"
        ours = {s.sandbox_id: s for s in Ours.list()}  # our SDK and CLI show it too
        assert ours[first.sandbox_id].paused_bytes == detail["pausedBytes"]
        assert ours[second.sandbox_id].paused_bytes is None
        cli = subprocess.run(
            [sys.executable, "-m", "emberbox.cli", "sandbox", "list"],
            env={**os.environ, "COLUMNS": "250"}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        row = next(line for line in cli.stdout.splitlines() if first.sandbox_id in line)
        assert f"{detail['pausedBytes'] / 2**20:.1f} MiB" in row, cli.stdout

        refused = api.post(f"/sandboxes/{second.sandbox_id}/pause")
        assert refused.status_code == 429, refused.text
        assert "paused sandboxes" in refused.json()["message"]
        snapshot = api.post(f"/sandboxes/{second.sandbox_id}/snapshots", json={})
        assert snapshot.status_code == 429, snapshot.text
        assert second.get_info().state == SandboxState.RUNNING
        assert second.commands.run("echo alive").stdout == "alive\n"

        first.kill()
        second.pause()
        assert api.get(f"/sandboxes/{second.sandbox_id}").json()["state"] == "paused"
        resumed = Sandbox.connect(second.sandbox_id, timeout=60)
        assert "pausedBytes" not in api.get(f"/sandboxes/{resumed.sandbox_id}").json()
    finally:
        first.kill()
        second.kill()
