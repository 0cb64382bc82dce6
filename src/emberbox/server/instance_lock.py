"""One process per role and data dir: a second server or node refuses to start, changing nothing.

The lock is an ``flock`` on ``<data_dir>/<role>.lock``, taken before any recovery step runs
(removing half-made sandboxes, killing orphans): two processes doing those on the same state
would destroy each other's sandboxes. The kernel drops it when the process dies, even on SIGKILL.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..host.held_lock import HeldLock


class AlreadyRunning(RuntimeError):
    """Another process holds this data dir for the same role."""


class InstanceLock:
    def __init__(self, data_dir: Path, role: str) -> None:
        self.path = data_dir / f"{role}.lock"
        self.role = role
        self._lock = HeldLock(self.path)

    def acquire(self) -> InstanceLock:
        holder = self._lock.take(str(os.getpid()))
        if holder is not None:
            raise AlreadyRunning(
                f"an emberbox {self.role} already runs on {self.path.parent} "
                f"(pid {holder or 'of another process'}); stop it first or use another "
                "EMBERBOX_DATA_DIR"
            )
        return self

    def release(self) -> None:
        self._lock.release()
