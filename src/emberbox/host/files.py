"""Files written whole or not at all: a process killed mid-write leaves the old file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: Path, suffix: str = ".tmp") -> Iterator[tuple[int, Path]]:
    """An open descriptor and the path of a new file beside ``path``, renamed over it when the
    block ends, removed if it raises: readers see the old file or the new, never a part.

    The temporary file's name is unique, so two processes saving the same file (two nodes
    sharing a template store or a layer cache) each rename a whole file of their own. The
    block owns the descriptor (closes it, or hands it to ``os.fdopen``).
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    tmp = Path(name)
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | str, private: bool = False) -> None:
    """Write ``data`` beside ``path`` and rename it over (:func:`replacing`).

    ``Path.write_text`` truncates first, so a SIGKILL between the truncate and the write
    leaves an empty file that the next start cannot parse.
    """
    with replacing(path) as (fd, _), os.fdopen(fd, "wb") as f:
        if not private:
            os.fchmod(f.fileno(), 0o644)
        f.write(data.encode() if isinstance(data, str) else data)
