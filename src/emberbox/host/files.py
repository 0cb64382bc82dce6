"""Files written whole or not at all: a process killed mid-write leaves the old file."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, private: bool = False) -> None:
    """Write ``data`` beside ``path`` and rename it over: readers see the old file or the new.

    ``Path.write_text`` truncates first, so a SIGKILL between the truncate and the write
    leaves an empty file that the next start cannot parse.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
