"""``emberbox keys create|list|revoke`` against a real server's database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from emberbox.server.testing import ServerProcess


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBERBOX_", "E2B_"))}
    env["EMBERBOX_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "emberbox.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, env={"EMBERBOX_BACKEND": "local"})
    server.start()
    try:
        created = _cli(tmp_path, "keys", "create", "--team", "cli-team", "--name", "ci", "--json")
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)
        assert key["key"].startswith("e2b_") and len(key["key"]) == 44

        listed = json.loads(_cli(tmp_path, "keys", "list", "--json").stdout)
        mine = [k for k in listed if k["key_id"] == key["keyID"]]
        assert mine and mine[0]["team"] == "cli-team" and not mine[0]["revoked"]
        assert key["key"] not in json.dumps(listed)  # the secret is never stored or shown again

        url = f"{server.api_url}/v2/sandboxes"
        assert httpx.get(url, headers={"X-API-KEY": key["key"]}).status_code == 200
        assert _cli(tmp_path, "keys", "revoke", key["keyID"]).returncode == 0
        again = _cli(tmp_path, "keys", "revoke", key["keyID"])
        assert again.returncode == 1 and again.stderr.startswith("error:")
        deadline = time.monotonic() + 10
        status = 200
        while status == 200 and time.monotonic() < deadline:
            status = httpx.get(url, headers={"X-API-KEY": key["key"]}).status_code
            time.sleep(0.5)
        assert status == 401
    finally:
        server.stop()
        server.kill_sandboxes()


def test_logs_show_lifecycle_and_processes(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, env={"EMBERBOX_BACKEND": "local"})
    server.start()
    try:
        assert server.first_key is not None
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("EMBERBOX_", "E2B_"))},
            **server.sdk_env(server.first_key),
        }

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "emberbox.cli", *args],
                capture_output=True, text=True, timeout=60, env=env,
            )  # fmt: skip

        created = cli("sandbox", "create", "--json")
        assert created.returncode == 0, created.stderr
        sandbox_id = json.loads(created.stdout)["sandboxID"]
        ran = cli("sandbox", "exec", sandbox_id, "--", "echo logged-$((6*7))")
        assert (ran.returncode, ran.stdout) == (0, "logged-42\n")
        shown = cli("logs", sandbox_id, "--json")
        assert shown.returncode == 0, shown.stderr
        messages = [json.loads(line)["message"] for line in shown.stdout.splitlines()]
        assert messages[0] == "sandbox created from template base"
        assert any("logged-$((6*7))" in m for m in messages)
        assert any(m.endswith("ended: exit status 0") for m in messages)

        # --follow prints what comes later once, and nothing twice.
        follow = subprocess.Popen(
            [sys.executable, "-m", "emberbox.cli", "logs", sandbox_id, "--follow", "--json"],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            for word in ("one", "two"):
                assert (
                    cli("sandbox", "exec", sandbox_id, "--", f"echo followed-{word}").returncode
                    == 0
                )
            followed: list[dict[str, Any]] = []
            deadline = time.monotonic() + 30
            assert follow.stdout is not None
            while sum("followed-two" in str(e["message"]) for e in followed) == 0:
                assert time.monotonic() < deadline, followed
                followed.append(json.loads(follow.stdout.readline()))
            time.sleep(2.5)  # two more polls: nothing printed again
        finally:
            follow.kill()
        rest = follow.communicate()[0]
        followed += [json.loads(line) for line in rest.splitlines()]
        seqs = [e["fields"]["seq"] for e in followed if "seq" in e["fields"]]
        assert len(seqs) == len(set(seqs)), "an entry was printed twice"
        assert any("followed-one" in str(e["message"]) for e in followed)
        assert cli("sandbox", "kill", sandbox_id).returncode == 0
        gone = cli("logs", sandbox_id)
        assert gone.returncode == 1 and "NotFound" in gone.stderr
    finally:
        server.stop()
        server.kill_sandboxes()


def test_a_setting_that_cannot_be_read_stops_the_server_and_the_node_in_one_line(
    tmp_path: Path,
) -> None:
    """Refused, never ignored: a renamed or malformed setting ends ``emberbox server`` and
    ``emberbox node`` before they start anything, with the setting named and no traceback."""
    bad = {"EMBERBOX_WARM_POOL_OFFLOAD": ("off", "is now EMBERBOX_OFFLOAD"),
           "EMBERBOX_OFFLOAD_IDLE_S": ("soon", "EMBERBOX_OFFLOAD_IDLE_S='soon'")}  # fmt: skip
    for name, (value, said) in bad.items():
        for command in ("server", "node"):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBERBOX_", "E2B_"))}
            env |= {"EMBERBOX_DATA_DIR": str(tmp_path), name: value}
            ended = subprocess.run([sys.executable, "-m", "emberbox.cli", command],
                                   capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
            assert ended.returncode != 0, (command, name)
            assert said in ended.stderr and "Traceback" not in ended.stderr, ended.stderr
    assert list(tmp_path.iterdir()) == [], "the server or the node started before it refused"
