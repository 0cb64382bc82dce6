"""envd's duties inside a sandbox, started with ``emberbox-envd --guest`` (the sandbox's
``/opt/emberbox/init`` passes it; envd run anywhere else does none of this).

PID 1 stays a shell that only reaps orphans and passes TERM on (templates/base.py): envd
waits for its own children, and a reaper in the same process would take their exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess

from ..._connect.errors import ConnectError
from ..creds import spawn_as_user
from ..process.exit_fd import exited
from ..users import User
from .oom import OomGuard
from .portfwd import forward_forever
from .sudo_broker import serve

log = logging.getLogger("emberbox.envd.guest")

START_LOG = "/var/log/emberbox-start.log"


class GuestDuties:
    def __init__(self, envd_port: int, user: str, workdir: str) -> None:
        self.envd_port, self.user, self.workdir = envd_port, user, workdir
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        guard = OomGuard(protected=lambda: ())  # envd itself and PID 1 are never chosen
        self._tasks = [
            asyncio.create_task(guard.run_forever()),
            asyncio.create_task(forward_forever(skip=frozenset({self.envd_port}))),
            asyncio.create_task(serve()),
        ]
        command = os.environ.get("EMBERBOX_START_CMD")
        if command:
            self._tasks.append(asyncio.create_task(self._start_command(command)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _start_command(self, command: str) -> None:
        """The template's start command as its user, in a session of its own, logging to
        START_LOG; reaped when it exits (it may also run for the sandbox's whole life)."""
        try:
            user = User.lookup(self.user)
        except ConnectError:  # a template whose user is gone: as before, run as root
            user = User.lookup("root")
        env = {**os.environ, "HOME": user.home, "USER": user.name, "LOGNAME": user.name}
        cwd = self.workdir if os.path.isdir(self.workdir) else user.home

        # Opened here, as root: the spawning thread holds the user's ids, who may not write it.
        out = await asyncio.to_thread(open, START_LOG, "ab")
        try:
            popen = await spawn_as_user(
                user,
                lambda: subprocess.Popen(
                    ["/bin/bash", "-l", "-c", command],
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                ),
            )
        finally:
            out.close()
        code = await exited(popen)
        log.info("start command exited %s", code)
