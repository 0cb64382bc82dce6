"""An interactive PTY session: raw local terminal, stdin forwarded, resized on SIGWINCH."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import termios
import tty

from ..sdk._async.sandbox import AsyncSandbox
from ..sdk.exceptions import CommandExitException
from ..sdk.models import PtySize


def _size() -> PtySize:
    columns, lines = shutil.get_terminal_size((80, 24))
    return PtySize(rows=lines, cols=columns)


async def run_shell(sandbox: AsyncSandbox, user: str | None = None) -> int:
    """Returns the remote shell's exit code once it ends."""
    loop = asyncio.get_running_loop()
    stdin_fd = sys.stdin.fileno()
    interactive = os.isatty(stdin_fd)
    terminal = await sandbox.pty.create(_size(), user=user)
    saved = termios.tcgetattr(stdin_fd) if interactive else None
    pending: set[asyncio.Task[None]] = set()
    typed: asyncio.Queue[bytes] = asyncio.Queue()

    def forward_input() -> None:
        try:
            data = os.read(stdin_fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(stdin_fd)
            return
        typed.put_nowait(data)

    async def send_typed() -> None:
        """One sender, in order: a request per read, sent at once, could overtake another
        on its way (a paste of more than 4 KiB arriving shuffled)."""
        while True:
            data = await typed.get()
            while not typed.empty():
                data += typed.get_nowait()
            await sandbox.pty.send_stdin(terminal.pid, data)

    sender = loop.create_task(send_typed())
    pending.add(sender)

    def resize() -> None:
        task = loop.create_task(sandbox.pty.resize(terminal.pid, _size()))
        pending.add(task)
        task.add_done_callback(pending.discard)

    out = sys.stdout.buffer
    try:
        if saved is not None:
            tty.setraw(stdin_fd)
        loop.add_reader(stdin_fd, forward_input)
        loop.add_signal_handler(signal.SIGWINCH, resize)
        try:
            result = await terminal.wait(on_pty=lambda data: (out.write(data), out.flush()))
            return result.exit_code
        except CommandExitException as exc:
            return exc.exit_code if exc.exit_code > 0 else 1
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(stdin_fd)
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGWINCH)
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        for task in pending:
            task.cancel()
