"""PTYs through the official SDK: a real terminal, input, resize and kill."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from e2b import AsyncSandbox, CommandExitException
from e2b.sandbox.commands.command_handle import PtySize

from tests.conftest import EnvdProcess


def _collect(handle: Any) -> tuple[list[bytes], threading.Thread]:
    chunks: list[bytes] = []

    def pump() -> None:
        with contextlib.suppress(CommandExitException):
            handle.wait(on_pty=lambda data: chunks.append(bytes(data)))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return chunks, thread


def _wait_for(chunks: list[bytes], needle: bytes, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        joined = b"".join(chunks)
        if needle in joined:
            return joined
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} never appeared in {b''.join(chunks)[-500:]!r}")


def test_pty_is_a_terminal_and_takes_input(sandbox: Any) -> None:
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=0)
    chunks, thread = _collect(handle)
    sandbox.pty.send_stdin(handle.pid, b"tty && stty size && echo marker-$((6*7))\n")
    output = _wait_for(chunks, b"marker-42")
    assert b"/dev/pts/" in output
    assert b"24 80" in output

    sandbox.pty.resize(handle.pid, PtySize(rows=30, cols=100))
    sandbox.pty.send_stdin(handle.pid, b"stty size\n")
    _wait_for(chunks, b"30 100")

    assert sandbox.pty.kill(handle.pid) is True
    thread.join(10)
    assert not thread.is_alive()


def test_pty_exit_ends_the_stream(sandbox: Any) -> None:
    handle = sandbox.pty.create(PtySize(rows=10, cols=40), timeout=0)
    _chunks, thread = _collect(handle)
    sandbox.pty.send_stdin(handle.pid, b"exit 3\n")
    thread.join(10)
    assert not thread.is_alive()
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert info.value.exit_code == 3


def _session_of(pid: int) -> tuple[int, int, int]:
    """(process group, session, controlling terminal) of ``pid`` from /proc: this envd runs
    on the host."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[2]), int(fields[3]), int(fields[4])


def _in_session(sid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError):
            if _session_of(int(entry))[1] == sid:
                found.append(int(entry))
    return found


async def test_sixteen_ptys_started_at_once_each_lead_their_own_terminal_and_end_cleanly(
    envd_factory: Callable[..., EnvdProcess], monkeypatch: pytest.MonkeyPatch, sandbox_user: str
) -> None:
    """Concurrent starts as root and as the user (behind ``setsid -c`` or forked, whichever
    each gets): every shell is its own session's leader on its own terminal of the size asked,
    runs as who asked, and ends, by ``exit`` or a kill, with its whole session."""
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_SANDBOX_URL", envd_factory().url)
    sandbox = await AsyncSandbox.create()

    async def one(i: int) -> tuple[Any, str]:
        chunks: list[bytes] = []
        user = "root" if i % 4 == 0 else sandbox_user
        handle = await sandbox.pty.create(
            PtySize(rows=24, cols=80 + i), on_data=chunks.append, user=user, timeout=0
        )
        await sandbox.pty.send_stdin(
            handle.pid, f"echo id-$((40+{i})) $(id -un) $$ $(tty) $(stty size) ok\n".encode()
        )
        deadline = time.monotonic() + 20
        while not (found := re.search(rf"id-{40 + i} (.*) ok\r?\n", b"".join(chunks).decode())):
            assert time.monotonic() < deadline, b"".join(chunks)[-300:]
            await asyncio.sleep(0.02)
        assert found.group(1).split()[:2] == [user, str(handle.pid)]
        assert found.group(1).split()[3:] == ["24", str(80 + i)]
        return handle, found.group(1).split()[2]

    started = await asyncio.gather(*(one(i) for i in range(16)))
    ttys = [tty for _, tty in started]
    assert len(set(ttys)) == 16 and all(tty.startswith("/dev/pts/") for tty in ttys)
    for handle, _ in started:
        group, session, terminal = _session_of(handle.pid)
        assert (group, session) == (handle.pid, handle.pid) and terminal != 0

    async def end(i: int, handle: Any) -> int:
        if i % 2:
            assert await sandbox.pty.kill(handle.pid) is True
        else:
            await sandbox.pty.send_stdin(handle.pid, f"sleep 0.1 & exit {i}\n".encode())
        try:
            result = await handle.wait()
        except CommandExitException as exc:
            result = exc
        return int(result.exit_code)

    codes = await asyncio.gather(*(end(i, handle) for i, (handle, _) in enumerate(started)))
    assert codes == [i if i % 2 == 0 else -1 for i in range(16)]
    running = {process.pid for process in await sandbox.commands.list()}
    assert running.isdisjoint(handle.pid for handle, _ in started)
    deadline = time.monotonic() + 10
    while any(_in_session(handle.pid) for handle, _ in started):
        assert time.monotonic() < deadline, [_in_session(h.pid) for h, _ in started]
        await asyncio.sleep(0.05)
