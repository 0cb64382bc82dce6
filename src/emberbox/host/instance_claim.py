"""One data dir per instance id on a host, or a clear refusal.

A node's host-wide objects (cgroups, interfaces, firewall chains, leases) carry a short id
hashed from its data dir, short because interface names have 15 characters. Two data dirs
can hash to the same id (1 in 65,536 for a pair), and a node starting on one would take the
other's sandboxes for orphans of its own and remove them. So a runtime claims its id for its
data dir: an ``flock`` on ``<directory>/<instance>.lock`` holding the data dir's path. The
kernel drops it when the process dies, even on SIGKILL. Runtimes of the same data dir (a
template build beside a node) share the claim; another data dir is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

_HOLDER_WRITE_S = 1.0  # how long a holder may take to write its path after it locked


class InstanceTaken(RuntimeError):
    """Another data dir on this host holds the same instance id."""


class InstanceClaim:
    def __init__(self, directory: Path, instance: str, data_dir: Path) -> None:
        self.path = directory / f"{instance}.lock"
        self.instance = instance
        self.data_dir = str(data_dir.resolve())
        self._fd: int | None = None

    def acquire(self) -> InstanceClaim:
        """Hold the id for this data dir (or find it held for it already); else refuse."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = _holder(fd)
            finally:
                os.close(fd)
            if holder != self.data_dir:
                raise InstanceTaken(
                    f"the data dir {self.data_dir} and the data dir {holder or '(unknown)'}, "
                    f"in use on this host, share the instance id {self.instance} that names "
                    "their sandboxes' cgroups, interfaces and firewall chains; use another "
                    "EMBERBOX_DATA_DIR"
                ) from None
            return self  # (held for this data dir by another runtime: shared)
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.data_dir.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # a runtime never closed (a script's) lets go of it too
        self.release()


def _holder(fd: int) -> str:
    """The path the holder wrote (it writes it right after it locked)."""
    deadline = time.monotonic() + _HOLDER_WRITE_S
    while not (text := os.pread(fd, 4096, 0).decode(errors="replace")):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return text
