"""A process started as another user without a standby shell: vforked from a thread that holds
the user's ids (``Popen(user=...)`` would fork envd whole, on the event loop). It is the user
through and through, a cwd only root can enter still starts the ordinary way, and a start
cancelled while the thread spawns leaves no process behind. On the host, as root."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from emberbox._proto.process import process_pb2 as pb
from emberbox.envd.process.manager import Exit, Feed, ProcessManager
from emberbox.envd.state import EnvdState
from emberbox.envd.users import User

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting as another user needs root")


async def _output(feed: Feed) -> tuple[str, Exit]:
    out = b""
    while not isinstance(event := await asyncio.wait_for(feed.get(), 20), Exit):
        out += getattr(event, "data", b"")
    return out.decode(), event


async def test_a_process_started_as_a_user_has_only_the_users_ids(sandbox_user: str) -> None:
    user = User.lookup(sandbox_user)
    manager = ProcessManager(EnvdState(standby_shells=0))
    show = "grep -E '^(Uid|Gid|Groups):' /proc/self/status; pwd"
    config = pb.ProcessConfig(cmd="/bin/sh", args=["-c", show])
    _, feed = await manager.start(config, user, pty=None, stdin=False, tag=None)
    text, end = await _output(feed)
    assert end.exit_code == 0, text
    fields = {line.split(":")[0]: line.split()[1:] for line in text.splitlines()[:3]}
    assert fields["Uid"] == [str(user.uid)] * 4  # real, effective, saved, filesystem
    assert fields["Gid"] == [str(user.gid)] * 4
    assert sorted(map(int, fields["Groups"])) == sorted(user.groups())
    assert text.splitlines()[3] == user.home


async def test_a_cwd_only_root_can_enter_still_starts_there(
    sandbox_user: str, tmp_path: Path
) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    manager = ProcessManager(EnvdState(standby_shells=0))
    config = pb.ProcessConfig(cmd="/bin/sh", args=["-c", "id -un; pwd"], cwd=str(closed))
    _, feed = await manager.start(
        config, User.lookup(sandbox_user), pty=None, stdin=False, tag=None
    )
    text, end = await _output(feed)
    assert (end.exit_code, text.split()) == (0, [sandbox_user, str(closed)])


async def test_a_start_cancelled_while_it_spawns_leaves_no_process(sandbox_user: str) -> None:
    marker = f"EMBERBOX_ORPHAN_{time.monotonic_ns()}"
    manager = ProcessManager(EnvdState(standby_shells=0))
    config = pb.ProcessConfig(cmd="/bin/sleep", args=["30"], envs={marker: "1"})
    user = User.lookup(sandbox_user)
    starting = asyncio.create_task(manager.start(config, user, pty=None, stdin=False, tag=None))
    await asyncio.sleep(0)  # (it hands the spawn to its thread and waits)
    assert starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    deadline = time.monotonic() + 10
    while _carrying(marker):
        assert time.monotonic() < deadline, "the process started for the cancelled call lives on"
        await asyncio.sleep(0.05)
    assert manager.list() == []


def _carrying(marker: str) -> list[int]:
    """Processes whose environment holds ``marker``, and zombie ``sleep`` children of ours
    (a zombie's environment reads empty): one killed and never reaped."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
            with open(f"/proc/{entry}/stat") as f:
                name, rest = f.read().rsplit(")", 1)
            state, ppid = rest.split()[:2]
            if state == "Z" and int(ppid) == os.getpid() and name.endswith("(sleep"):
                found.append(int(entry))
        except OSError:
            continue
    return found
