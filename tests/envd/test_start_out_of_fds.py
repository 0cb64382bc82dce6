"""A start that fails after its process started (envd out of file descriptors as it takes on
the process: the fd that tells of its exit, a copy of the PTY's master) is refused, and
leaves nothing: the process and its group are killed and reaped, every fd envd opened for it
is closed, and the next start works. The fault is injected where the fd is opened (a real
EMFILE cannot be aimed at that one call); everything else is real processes on the host."""

from __future__ import annotations

import asyncio
import errno
import os
import time

import pytest

from emberbox._connect.errors import Code, ConnectError
from emberbox._proto.process import process_pb2 as pb
from emberbox.envd.process import manager as manager_module
from emberbox.envd.process.manager import Exit, ProcessManager
from emberbox.envd.process.standby import Standby
from emberbox.envd.state import EnvdState
from emberbox.envd.users import User


def _fds() -> set[str]:
    return {
        f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")  # (the listing's own)
    }


def _in_group(pgid: int) -> list[int]:
    """Live (not zombie) processes in group ``pgid``, its leader included."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


async def _until(condition: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not (condition() if callable(condition) else condition):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("how", ["pipes", "pty", "standby shell"])
async def test_a_start_that_runs_out_of_fds_kills_what_it_started_and_closes_its_fds(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = ProcessManager(EnvdState(standby_shells=1 if how == "standby shell" else 0))
    user = User.lookup("root" if os.geteuid() == 0 else os.environ.get("USER", "root"))
    command = "sleep 300; echo unreachable"  # (a shell that waits on its child: a group)
    if how == "standby shell":
        config = pb.ProcessConfig(cmd="/bin/bash", args=["-l", "-c", command])
    else:
        config = pb.ProcessConfig(cmd="/bin/sh", args=["-c", command])
    pty = pb.PTY(size=pb.PTY.Size(cols=80, rows=24)) if how == "pty" else None
    before = _fds()
    started: list[int] = []

    def out_of_fds(pid: int) -> int:
        started.append(pid)
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    killed: list[int] = []  # standby shells given up on (the path taken: see below)
    kill = Standby.kill

    def spied(standby: Standby) -> None:
        killed.append(standby.popen.pid)
        kill(standby)

    with monkeypatch.context() as patch:
        patch.setattr(manager_module, "exit_fd", out_of_fds)
        patch.setattr(Standby, "kill", spied)
        with pytest.raises(ConnectError) as refused:
            await manager.start(config, user, pty=pty, stdin=how == "pipes", tag="t")
    assert refused.value.code == Code.INVALID_ARGUMENT
    assert "Too many open files" in refused.value.message
    [pid] = started
    assert killed == ([pid] if how == "standby shell" else [])
    assert manager.list() == []
    await _until(lambda: not _in_group(pid), f"the process group {pid} still runs")
    await _until(lambda: not os.path.exists(f"/proc/{pid}"), f"{pid} was not reaped")
    await _until(lambda: _fds() == before, f"fds left open: {_fds() - before}")

    _, feed = await manager.start(
        pb.ProcessConfig(cmd="/bin/sh", args=["-c", "echo next"]),
        user,
        pty=None,
        stdin=False,
        tag=None,
    )
    out = b""
    while not isinstance(event := await asyncio.wait_for(feed.get(), 20), Exit):
        out += getattr(event, "data", b"")
    assert (out, event.exit_code) == (b"next\n", 0)
    await manager.close()
