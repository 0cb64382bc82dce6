"""Non-blocking file-descriptor plumbing on the event loop (pipes and PTY masters)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Callable

READ_CHUNK = 64 * 1024
# The most one wake-up reads: a writer as fast as envd (on another CPU) never leaves a short
# read, and all it wrote would be taken before anyone could hold it back, the loop stalled.
READ_LIMIT = 1024 * 1024
DRAIN_READS = 256  # at most ~256 MiB read after a process's exit


def set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def read_available(fd: int, limit: int = READ_LIMIT) -> tuple[list[bytes], bool]:
    """What is readable right now, up to ``limit`` bytes, and whether the writer side is gone
    (EOF / PTY EIO)."""
    chunks: list[bytes] = []
    while limit > 0:
        try:
            data = os.read(fd, min(READ_CHUNK, limit))
        except BlockingIOError:
            return chunks, False
        except OSError as exc:
            if exc.errno == errno.EIO:  # PTY master after the last slave fd closed
                return chunks, True
            raise
        if not data:
            return chunks, True
        chunks.append(data)
        limit -= len(data)
        if len(data) < READ_CHUNK:
            return chunks, False
    return chunks, False


class FdReader:
    """Calls ``on_data`` with each chunk and ``on_eof`` once; owns and closes the fd."""

    def __init__(
        self, fd: int, on_data: Callable[[bytes], None], on_eof: Callable[[], None]
    ) -> None:
        self.fd = fd
        self._on_data = on_data
        self._on_eof = on_eof
        self._loop = asyncio.get_running_loop()
        self.closed = False
        set_nonblocking(fd)
        self._loop.add_reader(fd, self._readable)

    def _readable(self, limit: int = READ_LIMIT) -> int:
        """Pass on what can be read now, up to ``limit``; how many bytes, 0 when no more may
        follow (the end, or nothing there)."""
        try:
            chunks, eof = read_available(self.fd, limit)
        except OSError:
            chunks, eof = [], True
        for chunk in chunks:
            self._on_data(chunk)
        if eof:
            self.close()
            return 0
        return sum(map(len, chunks))

    def pause(self) -> None:
        """Stop reading for now: the writer blocks once the pipe (or terminal) is full."""
        if not self.closed:
            self._loop.remove_reader(self.fd)

    def resume(self) -> None:
        if not self.closed:
            self._loop.add_reader(self.fd, self._readable)

    def drain_and_close(self, room: Callable[[int], int] = lambda taken: READ_LIMIT) -> None:
        """Take what is buffered now and stop; used when the process has exited. Read until
        nothing is left: one pass stops at a short read, and a PTY master hands out ~4 KiB a
        read, so what a process printed just before it exited was cut off. (Bounded: a
        daemon the process left may still be writing; ``room`` tells, from the bytes taken
        so far, how many more may be.)"""
        taken = 0
        for _ in range(DRAIN_READS):
            limit = min(READ_LIMIT, room(taken))
            if self.closed or limit <= 0 or not (read := self._readable(limit)):
                break
            taken += read
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self._on_eof()


class FdWriter:
    """A process's input: writes to a non-blocking fd, waiting for writability instead of
    blocking, and the one way to stop writing to it. A write waiting when the input closes
    (the process exited, CloseStdin) is woken with ``BrokenPipeError`` before the fd is
    closed: waking after, it would write to whatever file took that fd number since, an
    upload's say. ``owns``: the fd is closed here (a PTY master is its reader's)."""

    def __init__(self, fd: int, owns: bool = True) -> None:
        self.fd = fd
        self.owns = owns
        self.closed = False
        self._waiting: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    async def write(self, data: bytes) -> None:
        """Every byte of ``data`` (one writer at a time: the caller serialises them)."""
        view = memoryview(data)
        while view:
            if self.closed:
                raise BrokenPipeError("stdin of the process is closed")
            try:
                written = os.write(self.fd, view)
                view = view[written:]
            except BlockingIOError:
                self._waiting = self._loop.create_future()
                self._loop.add_writer(self.fd, self._waiting.set_result, None)
                try:
                    await self._waiting
                finally:
                    self._waiting = None
                    if not self.closed:  # (once closed, the number may be another's)
                        self._loop.remove_writer(self.fd)
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EBADF):
                    raise BrokenPipeError("stdin of the process is closed") from exc
                raise

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._waiting is not None:
            self._loop.remove_writer(self.fd)
            if not self._waiting.done():
                self._waiting.set_exception(BrokenPipeError("stdin of the process is closed"))
        if self.owns:
            with contextlib.suppress(OSError):
                os.close(self.fd)
