"""PID 1 must reap every child, including orphans it never started; code that waits for a
child of its own (the sudo broker) asks the reaper instead of calling waitpid itself, which
would race with it."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future

UNCLAIMED_TTL_S = 60.0


class Reaper:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[int, Future[int]] = {}
        self._unclaimed: dict[int, tuple[int, float]] = {}  # pid -> (exit code, when)

    def reap(self) -> None:
        """Collect every exited child (call on SIGCHLD); hand codes to whoever waits."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            with self._lock:
                waiter = self._waiters.pop(pid, None)
                if waiter is None:
                    now = time.monotonic()
                    self._unclaimed[pid] = (code, now)
                    for old in [p for p, (_, t) in self._unclaimed.items()
                                if now - t > UNCLAIMED_TTL_S]:  # fmt: skip
                        del self._unclaimed[old]
            if waiter is not None:
                waiter.set_result(code)

    def wait(self, pid: int) -> int:
        """Block until child ``pid`` exits and return its exit code (negative: signal)."""
        with self._lock:
            if pid in self._unclaimed:
                return self._unclaimed.pop(pid)[0]
            waiter = self._waiters.setdefault(pid, Future())
        return waiter.result()
