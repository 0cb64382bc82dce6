"""Stable content hashes for cache keys: JSON values, files and whole directory trees."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SKIP_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".git", ".venv"}


def hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def hash_tree(root: Path, digest: Any = None) -> str:
    """sha256 over relative paths, modes, symlink targets and file contents (not mtimes)."""
    h = digest or hashlib.sha256()
    for path in _walk(root):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        h.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if path.is_symlink():
            h.update(os.readlink(path).encode())
        elif path.is_file():
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        h.update(b"\0")
    return str(h.hexdigest())


def hash_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in pieces (an uploaded archive may be gigabytes)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def hash_paths(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p.name}\0".encode())
        if p.is_dir():
            h.update(hash_tree(p).encode())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


def _walk(root: Path) -> list[Path]:
    if not root.is_dir() or root.is_symlink():
        return [root]
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        base = Path(dirpath)
        out.extend(base / d for d in dirnames)
        out.extend(base / f for f in sorted(filenames) if not f.endswith(".pyc"))
    return sorted(out)
