"""A file descriptor that becomes readable when a child exits, without reaping it.

``pidfd_open`` where the kernel has it; otherwise (gVisor's runsc has no pidfd_open) a pipe
written by a thread blocked in ``waitid(WNOWAIT)``, so ``Popen.poll`` can still reap the child.
"""

from __future__ import annotations

import errno
import os
import threading

_pidfd_works: bool | None = None


def _emulated(pid: int) -> int:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)

    def wait() -> None:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
        finally:
            os.write(write_end, b"x")
            os.close(write_end)

    threading.Thread(target=wait, name=f"exit-{pid}", daemon=True).start()
    return read_end


def exit_fd(pid: int) -> int:
    global _pidfd_works
    if _pidfd_works is not False:
        try:
            fd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                raise
            _pidfd_works = False
        else:
            _pidfd_works = True
            return fd
    return _emulated(pid)
