"""Run host tools (runsc, ip, nft, mount) as asyncio subprocesses with readable failures."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from .errors import HostError

# Children started here that asyncio is waiting for: an orphan reaper must never take them.
SPAWNED: set[int] = set()


class CommandFailed(HostError):
    """A host command exited non-zero; carries argv and stderr so the cause is visible."""

    def __init__(self, argv: tuple[str, ...], code: int, stderr: str) -> None:
        self.argv, self.code, self.stderr = argv, code, stderr
        super().__init__(f"{' '.join(argv)} exited {code}: {stderr.strip()[-2000:]}")


@dataclass(frozen=True)
class Completed:
    code: int
    stdout: str
    stderr: str


async def run(
    *argv: str,
    check: bool = True,
    stdin: bytes | None = None,
    timeout: float = 60.0,
) -> Completed:
    """Run ``argv`` to completion; raise :class:`CommandFailed` on a non-zero exit if ``check``."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    SPAWNED.add(proc.pid)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    finally:
        SPAWNED.discard(proc.pid)
    code = proc.returncode if proc.returncode is not None else -1
    result = Completed(code, out.decode(errors="replace"), err.decode(errors="replace"))
    if check and code != 0:
        raise CommandFailed(argv, code, result.stderr or result.stdout)
    return result


async def run_to_file(
    *argv: str,
    log_path: str,
    timeout: float | None = None,
    stdin_path: str | None = None,
    stdout_path: str | None = None,
) -> int:
    """Run ``argv`` with stdio on files, never a pipe: output to ``log_path`` (stdout to
    ``stdout_path`` when given, created afresh), input from ``stdin_path`` or nothing.

    A detached ``runsc run`` keeps its stdio open for the sandbox's whole life, so a pipe would
    never reach EOF; a file does not have that problem.
    """
    fds = [os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)]
    try:
        if stdout_path is not None:
            fds.append(os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        if stdin_path is not None:
            fds.append(os.open(stdin_path, os.O_RDONLY))
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=fds[-1] if stdin_path is not None else asyncio.subprocess.DEVNULL,
            stdout=fds[1] if stdout_path is not None else fds[0],
            stderr=fds[0],
        )
    finally:
        for fd in fds:
            os.close(fd)
    SPAWNED.add(proc.pid)
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    finally:
        SPAWNED.discard(proc.pid)


async def concurrently(*steps: Coroutine[Any, Any, object]) -> None:
    """Run independent host steps together and wait for all of them. If one fails the others
    are cancelled and waited for (a clean-up must not race a step still running), and the
    first failure is raised as itself, not wrapped in a group."""
    try:
        async with asyncio.TaskGroup() as group:
            for step in steps:
                group.create_task(step)
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
