"""``emberbox sandbox shell`` in a real pseudo-terminal: type, read, resize, exit."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time

from tests.conftest import EnvdProcess


def _read_until(fd: int, needle: bytes, timeout: float = 15.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not seen; got {seen[-400:]!r}")
        try:
            seen += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.02)
        except OSError:
            break
    return seen


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_shell_types_reads_resizes_and_exits(envd_debug: EnvdProcess) -> None:
    master, slave = pty.openpty()
    _set_size(slave, 25, 90)
    process = subprocess.Popen(
        [sys.executable, "-m", "emberbox.cli", "sandbox", "shell", "debug_sandbox_id"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        # The size comes from the terminal: COLUMNS and LINES (pytest-xdist's workers set
        # them) would take precedence over it.
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        | {"EMBERBOX_DEBUG": "true"},
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    os.set_blocking(master, False)
    try:
        _read_until(master, b"$ ")  # type only once the prompt is there, as a person would
        os.write(master, b"echo hi-$((40+2))\r")
        _read_until(master, b"hi-42")
        os.write(master, b"stty size\r")
        _read_until(master, b"25 90")
        _set_size(master, 33, 101)  # the kernel sends SIGWINCH to the CLI
        time.sleep(0.3)
        os.write(master, b"stty size\r")
        _read_until(master, b"33 101")
        os.write(master, b"exit 7\r")
        assert process.wait(15) == 7
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
