"""Files written whole or not at all: a process killed mid-write leaves the old file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, private: bool = False) -> None:
    """Write ``data`` beside ``path`` and rename it over: readers see the old file or the new.

    ``Path.write_text`` truncates first, so a SIGKILL between the truncate and the write
    leaves an empty file that the next start cannot parse. The temporary file's name is
    unique, so two processes saving the same file (two nodes sharing a template store) each
    rename a whole file of their own.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if not private:
                os.fchmod(f.fileno(), 0o644)
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
