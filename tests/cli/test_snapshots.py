"""``emberbox sandbox snapshot|fork|rollback|pause|resume`` and ``emberbox snapshot list|delete``
as real processes against a real server on gVisor, configured only by what it prints. The team
may hold two sandboxes, so a fork of two from a running sandbox gets one fork and one refusal."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from emberbox import Sandbox
from emberbox.server.testing import ServerProcess
from tests.cli.conftest import Cli


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``gvisor_server``'s server, with a team limit of two sandboxes."""
    from tests.runtimes.gvisor_support import gvisor_server

    tmp = tmp_path_factory.mktemp("cli-snapshots")
    with gvisor_server(tmp, {"EMBERBOX_MAX_SANDBOXES_PER_TEAM": "2"}) as srv:
        yield srv


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_snapshot_rollback_fork_pause_resume_delete(cli: Cli, server: ServerProcess) -> None:
    sandbox_id = ok(cli("sandbox", "create", "--timeout", "300")).strip()
    name = f"cli-{uuid.uuid4().hex[:8]}"
    try:
        ok(cli("sandbox", "exec", sandbox_id, "--", "sh", "-c", "echo one > /home/user/f"))
        named, exact, size = ok(cli("sandbox", "snapshot", sandbox_id, "--name", name)).split(
            maxsplit=2
        )  # (the name, and the snapshot itself, which a newer one taking the name is not)
        assert named == name and exact.startswith("(snap") and size.strip().endswith("iB")
        unnamed = json.loads(ok(cli("sandbox", "snapshot", sandbox_id, "--json")))
        assert unnamed["sandbox_id"] == sandbox_id and unnamed["size_bytes"] > 0

        listed = json.loads(ok(cli("snapshot", "list", "--sandbox", sandbox_id, "--json")))
        assert [s["snapshot_id"] for s in listed] == [unnamed["snapshot_id"], name]
        assert all(s["size_bytes"] > 0 for s in listed)
        shown = ok(cli("snapshot", "list", "--sandbox", sandbox_id))
        assert "2 snapshot(s)" in shown and name in shown and "MiB" in shown

        ok(cli("sandbox", "exec", sandbox_id, "--", "sh", "-c", "echo two > /home/user/f"))
        ok(cli("sandbox", "rollback", sandbox_id, name))
        assert ok(cli("sandbox", "exec", sandbox_id, "--", "cat", "/home/user/f")) == "one\n"
        missing = cli("sandbox", "rollback", sandbox_id, "nosuchsnapshot")
        assert missing.returncode == 1 and "NotFoundException" in missing.stderr

        # two forks, room for one more sandbox: one id on stdout, one refusal, exit 1
        forked = cli("sandbox", "fork", sandbox_id, "-n", "2", "--timeout", "60")
        assert forked.returncode == 1, forked.stderr + forked.stdout
        (fork_id,) = forked.stdout.split()
        assert "fork failed: RateLimitException" in forked.stderr
        assert ok(cli("sandbox", "exec", fork_id, "--", "cat", "/home/user/f")) == "one\n"
        ok(cli("sandbox", "kill", fork_id))
        zero = cli("sandbox", "fork", sandbox_id, "-n", "0")
        assert zero.returncode == 1 and "InvalidArgumentException" in zero.stderr

        assert ok(cli("sandbox", "pause", sandbox_id)).strip() == f"paused {sandbox_id}"
        paused = json.loads(ok(cli("sandbox", "list", "--state", "paused", "--json")))
        assert [s["sandbox_id"] for s in paused] == [sandbox_id]
        info = json.loads(ok(cli("sandbox", "info", sandbox_id, "--json")))
        assert info["state"] == "paused"  # looking does not resume it
        refused = cli("sandbox", "snapshot", sandbox_id)
        assert refused.returncode == 1 and "SandboxUnavailableException" in refused.stderr
        ok(cli("sandbox", "resume", sandbox_id, "--timeout", "120"))
        assert ok(cli("sandbox", "exec", sandbox_id, "--", "cat", "/home/user/f")) == "one\n"

        # Only the files: the processes end; --reboot boots a memory pause afresh too.
        sleeper = "setsid sleep 1000 >/dev/null 2>&1 </dev/null &"
        ok(cli("sandbox", "exec", sandbox_id, "--", "sh", "-c", sleeper))
        ok(cli("sandbox", "pause", sandbox_id, "--filesystem"))
        info = json.loads(ok(cli("sandbox", "info", sandbox_id, "--json")))
        assert (info["state"], info["pause_mode"]) == ("paused", "filesystem")
        ok(cli("sandbox", "resume", sandbox_id))
        looked = [
            "sandbox",
            "exec",
            sandbox_id,
            "--",
            "sh",
            "-c",
            "cat /home/user/f; pgrep -x sleep",
        ]
        gone = cli(*looked)
        assert gone.stdout == "one\n" and gone.returncode == 1, gone.stdout + gone.stderr
        ok(cli("sandbox", "exec", sandbox_id, "--", "sh", "-c", sleeper))
        ok(cli("sandbox", "pause", sandbox_id))
        ok(cli("sandbox", "resume", sandbox_id, "--reboot"))
        gone = cli(*looked)
        assert gone.stdout == "one\n" and gone.returncode == 1, gone.stdout + gone.stderr
    finally:
        Sandbox.kill(sandbox_id, api_key=server.first_key, api_url=server.api_url)

    assert ok(cli("snapshot", "delete", name)).strip() == f"deleted {name}"
    gone = cli("snapshot", "delete", name)
    assert gone.returncode == 1 and "not found" in gone.stderr
    ok(cli("snapshot", "delete", unnamed["snapshot_id"]))
    assert json.loads(ok(cli("snapshot", "list", "--sandbox", sandbox_id, "--json"))) == []
