"""A process's input after it closes: a write waiting on a full stdin pipe when the process
exits is told the pipe is closed, and never writes to whatever file took its fd number since
(an upload another request opened meanwhile). On the host, as root: no sandbox needed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from emberbox._connect.errors import ConnectError
from emberbox._proto.process import process_pb2 as pb
from emberbox.envd.process.manager import ManagedProcess, ProcessManager
from emberbox.envd.state import EnvdState
from emberbox.envd.users import User


async def test_input_waiting_when_the_process_exits_never_reaches_another_file(
    tmp_path: Path,
) -> None:
    manager = ProcessManager(EnvdState(standby_shells=0))
    config = pb.ProcessConfig(cmd="/bin/sh", args=["-c", "sleep 0.5"])  # reads no stdin
    process, _ = await manager.start(config, User.lookup("root"), pty=None, stdin=True, tag=None)
    other = tmp_path / "upload"
    other.touch()
    opened: list[int] = []
    retain = process.on_exit

    def on_exit(exited: ManagedProcess) -> None:
        """As the exit is seen: other requests open files (each takes the lowest free fd,
        the stdin pipe's among them) before the waiting write runs again."""
        if retain is not None:
            retain(exited)
        opened.extend(os.open(other, os.O_WRONLY) for _ in range(8))

    process.on_exit = on_exit
    writing = asyncio.create_task(process.send_input(b"typed\n" * 200_000, to_pty=False))
    await asyncio.wait_for(process.finished.wait(), 10)
    with pytest.raises(ConnectError, match="stdin not enabled or closed"):
        await asyncio.wait_for(writing, 5)
    for fd in opened:
        os.close(fd)
    assert other.stat().st_size == 0
