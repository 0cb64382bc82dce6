"""A file descriptor that becomes readable when a child exits, without reaping it.

``pidfd_open`` where the kernel has it; otherwise (gVisor's runsc has no pidfd_open) a pipe
written by a thread blocked in ``waitid(WNOWAIT)``, so ``Popen.poll`` can still reap the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
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
            with contextlib.suppress(OSError):  # (its reader may have stopped waiting)
                os.write(write_end, b"x")
            os.close(write_end)

    try:
        threading.Thread(target=wait, name=f"exit-{pid}", daemon=True).start()
    except BaseException:  # (no thread to be had: the pipe is nobody's)
        os.close(read_end)
        os.close(write_end)
        raise
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


async def exited(popen: subprocess.Popen[bytes]) -> int:
    """``popen.wait()`` on the event loop: no thread of the loop's default executor held for
    a process's whole life (a few of those would starve every ``to_thread`` in envd)."""
    fd = exit_fd(popen.pid)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return popen.wait()
