"""A build step's output, bounded: on the host's disk while the step runs, and in what is kept.

A step's output goes to a file on the host (outside any sandbox's disk quota) and from there
into the node's memory, the build's log lines and the database: ``yes`` in a RUN step filled
them all for the step's whole timeout. Past ``MAX_FILE_BYTES`` the file is emptied (its
writer appends, so it goes on at the new end) and what it held is counted; what is kept of
the whole is its first ``HEAD_BYTES`` and its last ``TAIL_BYTES``, the middle cut with a note
of how much.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

MAX_FILE_BYTES = 16 << 20
HEAD_BYTES = 64 << 10
TAIL_BYTES = 192 << 10
CHECK_EVERY_S = 0.2  # (a writer gets this long past the cap at most)


class StepOutput:
    def __init__(self, log: Path) -> None:
        self.log = log
        self.head: bytes | None = None  # kept once the file was first emptied
        self.cut = 0  # bytes emptied out of the file, past the head

    async def watch(self) -> None:
        """Keep the file under ``MAX_FILE_BYTES`` until cancelled (the step's end)."""
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            self.bound()

    def bound(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            size = self.log.stat().st_size
            if size <= MAX_FILE_BYTES:
                return
            with self.log.open("r+b") as f:
                if self.head is None:
                    self.head = f.read(HEAD_BYTES)
                    size -= len(self.head)
                os.ftruncate(f.fileno(), 0)
            self.cut += size

    def text(self) -> str:
        """The output as kept: all of it, or its head, a note of the cut, and its tail."""
        try:
            with self.log.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if self.head is None and size <= HEAD_BYTES + TAIL_BYTES:
                    return f.read().decode(errors="replace")
                if self.head is None:  # (never emptied: the file holds it all)
                    head, cut = f.read(HEAD_BYTES), size - HEAD_BYTES - TAIL_BYTES
                else:
                    head, cut = self.head, self.cut + max(0, size - TAIL_BYTES)
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read()
        except FileNotFoundError:
            return ""
        note = f"\n[... {cut} bytes of output cut ...]\n".encode() if cut else b""
        return (head + note + tail).decode(errors="replace")
