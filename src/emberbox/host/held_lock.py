"""An exclusive ``flock`` on a file that names its holder: a process (or a data dir) holds a
role on this host until it lets go or dies, when the kernel drops it, even on SIGKILL."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

_HOLDER_WRITE_S = 1.0  # how long a holder may take to write its name after it locked


class HeldLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def take(self, holder: str) -> str | None:
        """Hold it, naming ``holder`` in the file: None. Held by another: the name it wrote
        (empty if it wrote none in time)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return _holder(fd)
            finally:
                os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self._fd = fd
        return None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> str:
    """The name the holder wrote (it writes it right after it locked)."""
    deadline = time.monotonic() + _HOLDER_WRITE_S
    while not (text := os.pread(fd, 4096, 0).decode(errors="replace").strip()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return text
