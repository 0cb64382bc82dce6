"""A process's input after it closes: a write waiting on a full stdin pipe when the process
exits is told the pipe is closed, and never writes to whatever file took its fd number since
(an upload another request opened meanwhile). On the host, as root: no sandbox needed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path

import pytest

from emberbox._connect.errors import Code, ConnectError
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


async def test_terminal_input_after_the_process_let_go_of_its_terminal_reaches_no_file(
    tmp_path: Path,
) -> None:
    """A PTY process that closes its terminal and runs on (a daemonising script): envd's
    reader closes the master at the terminal's end, and the next file opened takes its fd
    number. Input, a CloseStdin's ^D and a resize must not reach that file."""
    manager = ProcessManager(EnvdState(standby_shells=0))
    let_go = 'trap "" HUP; exec </dev/null >/dev/null 2>&1; sleep 5'
    config = pb.ProcessConfig(cmd="/bin/bash", args=["-c", let_go])
    process, _ = await manager.start(
        config, User.lookup("root"), pty=pb.PTY(size=pb.PTY.Size(cols=80, rows=24)),
        stdin=False, tag=None,
    )  # fmt: skip
    try:
        for _ in range(500):
            if all(reader.closed for reader in process._readers):
                break
            await asyncio.sleep(0.01)
        assert all(reader.closed for reader in process._readers) and process.running
        upload = tmp_path / "upload"
        fd = os.open(upload, os.O_WRONLY | os.O_CREAT)  # (another request's file)
        try:
            assert fd == process.pty_master  # the number is the upload's now
            with contextlib.suppress(ConnectError):
                await process.send_input(b"typed into the terminal\n", to_pty=True)
            with contextlib.suppress(ConnectError, OSError):
                await process.close_stdin()
            with contextlib.suppress(ConnectError, OSError):
                process.resize(100, 30)
        finally:
            os.close(fd)
        assert upload.read_bytes() == b""
    finally:
        process.signal(9)
        await asyncio.sleep(0.1)


async def test_end_of_terminal_input_comes_after_the_input_still_being_written() -> None:
    """CloseStdin on a terminal while a long input still waits for room: the ^D goes after
    all of it (inside it, it would end a line, not the input, or find the terminal full)."""
    manager = ProcessManager(EnvdState(standby_shells=0))
    config = pb.ProcessConfig(cmd="/bin/sh", args=["-c", "stty -echo; sleep 1; wc -l"])
    process, _ = await manager.start(
        config, User.lookup("root"), pty=pb.PTY(size=pb.PTY.Size(cols=80, rows=24)),
        stdin=False, tag=None,
    )  # fmt: skip
    output = process.subscribe()
    try:
        writing = asyncio.create_task(process.send_input(b"typed\n" * 100_000, to_pty=True))
        await asyncio.sleep(0.3)
        assert not writing.done()  # (the terminal is full: nothing reads it for a second)
        await asyncio.wait_for(process.close_stdin(), 20)
        assert writing.done()
        await asyncio.wait_for(process.finished.wait(), 20)
        printed = b""
        while not output.empty():
            event = output.get_nowait()
            printed += getattr(event, "data", b"")
        assert re.search(rb"(?<![0-9])100000\s*$", printed), printed[-200:]  # (after echo's)
    finally:
        if process.running:
            process.signal(9)


async def test_end_of_terminal_input_waiting_when_the_process_exits_is_told_not_found() -> None:
    manager = ProcessManager(EnvdState(standby_shells=0))
    config = pb.ProcessConfig(cmd="/bin/sh", args=["-c", "sleep 0.5"])  # reads no input
    process, _ = await manager.start(
        config, User.lookup("root"), pty=pb.PTY(size=pb.PTY.Size(cols=80, rows=24)),
        stdin=False, tag=None,
    )  # fmt: skip
    writing = asyncio.create_task(process.send_input(b"typed\n" * 100_000, to_pty=True))
    await asyncio.sleep(0.1)
    assert not writing.done()
    with pytest.raises(ConnectError) as raised:
        await asyncio.wait_for(process.close_stdin(), 10)
    assert raised.value.code == Code.NOT_FOUND
    with pytest.raises(ConnectError):
        await writing
