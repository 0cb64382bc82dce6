"""PTYs through the official SDK: a real terminal, input, resize and kill."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest
from e2b import CommandExitException
from e2b.sandbox.commands.command_handle import PtySize


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
