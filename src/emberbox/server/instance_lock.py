"""One process per role and data dir: a second server or node refuses to start, changing nothing.

The lock is an ``flock`` on ``<data_dir>/<role>.lock``, taken before any recovery step runs
(removing half-made sandboxes, killing orphans): two processes doing those on the same state
would destroy each other's sandboxes. The kernel drops it when the process dies, even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class AlreadyRunning(RuntimeError):
    """Another process holds this data dir for the same role."""


class InstanceLock:
    def __init__(self, data_dir: Path, role: str) -> None:
        self.path = data_dir / f"{role}.lock"
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> InstanceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise AlreadyRunning(
                f"an emberbox {self.role} already runs on {self.path.parent} (pid {holder}); "
                "stop it first or use another EMBERBOX_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
