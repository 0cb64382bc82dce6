"""File operations confined to one volume's root, for the content API.

Sandboxes write to volumes too, so a volume may hold symlinks to anywhere on the host. Every
path is therefore walked one component at a time from the root's file descriptor with
``O_NOFOLLOW``: a symlink is never followed (it is reported as one, or refused as a parent),
``..`` is refused, and a rename racing the walk cannot move it outside the volume. The
functions block; callers run them in a thread. Entries are dicts with the content API's field
names (times as unix seconds).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...vocabulary import DEFAULT_UID

MAX_DEPTH = 32
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ContentError(Exception):
    """A request the volume cannot satisfy; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Owner:
    """Who a new entry belongs to, and its mode (``None``: the defaults)."""

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None

    def __post_init__(self) -> None:
        for what, value, top in (("uid", self.uid, 2**32 - 2), ("gid", self.gid, 2**32 - 2),
                                 ("mode", self.mode, 0o7777)):  # fmt: skip
            if value is not None and not 0 <= value <= top:
                raise ContentError(400, f"{what} must be between 0 and {top}")


def _parts(path: str) -> list[str]:
    if "\0" in path or len(path) > 4096:
        raise ContentError(400, "invalid path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ContentError(400, "'..' is not allowed in volume paths")
    return parts


def _undecodable(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:  # surrogate-escaped bytes that are not UTF-8
        return True
    return False


def _display(parts: list[str]) -> str:
    return "/" + "/".join(parts)


@contextlib.contextmanager
def _open_dir(root: Path, parts: list[str], create: Owner | None = None) -> Iterator[int]:
    """A descriptor of the directory ``parts`` names; with ``create``, missing ones are made."""
    fd = os.open(root, _DIR)
    try:
        for i, name in enumerate(parts):
            try:
                nxt = os.open(name, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise ContentError(404, f"{_display(parts[: i + 1])} not found") from None
                _mkdir(fd, name, create)
                nxt = os.open(name, _DIR, dir_fd=fd)
            except (NotADirectoryError, OSError) as e:
                if isinstance(e, NotADirectoryError) or e.errno == 40:  # ELOOP: a symlink
                    raise ContentError(
                        400, f"{_display(parts[: i + 1])} is not a directory"
                    ) from None
                raise
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def _mkdir(dir_fd: int, name: str, owner: Owner) -> None:
    os.mkdir(name, 0o755 if owner.mode is None else owner.mode & 0o7777, dir_fd=dir_fd)
    _own(dir_fd, name, owner)


def _ids(owner: Owner) -> tuple[int, int]:
    uid = DEFAULT_UID if owner.uid is None else owner.uid
    return uid, DEFAULT_UID if owner.gid is None else owner.gid


def _own(dir_fd: int, name: str, owner: Owner) -> None:
    os.chown(name, *_ids(owner), dir_fd=dir_fd, follow_symlinks=False)
    if owner.mode is not None:
        _chmod(dir_fd, name, owner.mode)  # past the umask


def _chmod(dir_fd: int, name: str, mode: int) -> None:
    """chmod through a descriptor opened without following symlinks (Linux has no lchmod,
    and a path-based chmod would follow a symlink a sandbox swapped in)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == 40:  # ELOOP
            raise ContentError(400, f"{name} is a symlink: its mode cannot change") from None
        raise
    try:
        os.fchmod(fd, mode & 0o7777)
    finally:
        os.close(fd)


def _entry(parts: list[str], st: os.stat_result, target: str | None) -> dict[str, Any]:
    kind = (
        "directory" if stat.S_ISDIR(st.st_mode)
        else "file" if stat.S_ISREG(st.st_mode)
        else "symlink" if stat.S_ISLNK(st.st_mode)
        else "unknown"
    )  # fmt: skip
    entry: dict[str, Any] = {
        "name": parts[-1] if parts else "",
        "type": kind,
        "path": _display(parts),
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "atime": st.st_atime,
        "mtime": st.st_mtime,
        "ctime": st.st_ctime,
    }
    if target is not None:
        entry["target"] = target
    return entry


def _stat_at(dir_fd: int, parts: list[str]) -> dict[str, Any]:
    name = parts[-1]
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise ContentError(404, f"{_display(parts)} not found") from None
    target = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
    return _entry(parts, st, target)


def stat_path(root: Path, path: str) -> dict[str, Any]:
    parts = _parts(path)
    if not parts:
        return _entry([], os.stat(root), None)
    with _open_dir(root, parts[:-1]) as fd:
        return _stat_at(fd, parts)


def list_dir(root: Path, path: str, depth: int) -> list[dict[str, Any]]:
    """Entries under the directory, ``depth`` levels deep (1: its own entries)."""
    if not 1 <= depth <= MAX_DEPTH:
        raise ContentError(400, f"depth must be between 1 and {MAX_DEPTH}")
    parts = _parts(path)
    with _open_dir(root, parts) as fd:
        out: list[dict[str, Any]] = []
        _walk(fd, parts, depth, out)
    return out


def _walk(fd: int, parts: list[str], depth: int, out: list[dict[str, Any]]) -> None:
    for name in sorted(os.listdir(fd)):
        if _undecodable(name):
            continue  # a name a sandbox made that JSON (and a path) cannot carry
        child = [*parts, name]
        try:
            entry = _stat_at(fd, child)
        except ContentError:
            continue  # removed while listing
        out.append(entry)
        if depth > 1 and entry["type"] == "directory":
            try:
                sub = os.open(name, _DIR, dir_fd=fd)
            except OSError:
                continue
            try:
                _walk(sub, child, depth - 1, out)
            finally:
                os.close(sub)


def make_dir(root: Path, path: str, owner: Owner, parents: bool) -> dict[str, Any]:
    parts = _parts(path)
    if not parts:
        raise ContentError(400, "the volume's root exists already")
    with _open_dir(root, parts[:-1], create=owner if parents else None) as fd:
        try:
            _mkdir(fd, parts[-1], owner)
        except FileExistsError:
            raise ContentError(409, f"{_display(parts)} exists already") from None
        return _stat_at(fd, parts)


def open_file(root: Path, path: str) -> tuple[int, int]:
    """A regular file's descriptor, for reading, and its size."""
    parts = _parts(path)
    if not parts:
        raise ContentError(400, "the volume's root is a directory")
    with _open_dir(root, parts[:-1]) as dir_fd:
        try:
            # O_NONBLOCK: a FIFO a sandbox planted must not hang a server thread on open.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(parts[-1], flags, dir_fd=dir_fd)
        except FileNotFoundError:
            raise ContentError(404, f"{_display(parts)} not found") from None
        except OSError as e:
            if e.errno == 40:
                raise ContentError(400, f"{_display(parts)} is a symlink") from None
            raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ContentError(400, f"{_display(parts)} is not a file")
    return fd, st.st_size


def read_at(root: Path, path: str, offset: int, length: int) -> tuple[bytes, int]:
    """Up to ``length`` bytes of a regular file from ``offset``, and the file's size now."""
    fd, size = open_file(root, path)
    try:
        return os.pread(fd, max(0, min(length, size - offset)), offset), size
    finally:
        os.close(fd)


class FileWriter:
    """A file being uploaded: written to an unnamed file in the target's directory
    (``O_TMPFILE``), named only at the commit and at once renamed over the target. Readers (and
    sandboxes) see the old content or the new, never half of it, and a node killed mid-upload
    leaves nothing in the user's volume: the file never had a name, so the kernel frees it."""

    def __init__(self, root: Path, path: str, owner: Owner, parents: bool) -> None:
        self.parts = _parts(path)
        if not self.parts:
            raise ContentError(400, "the volume's root is a directory")
        self.owner = owner
        self._closed = False
        self._dirs = _open_dir(root, self.parts[:-1], create=owner if parents else None)
        self.dir_fd = self._dirs.__enter__()
        try:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self.parts[-1], dir_fd=self.dir_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise ContentError(409, f"{_display(self.parts)} is a directory")
            self.fd = os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644,
                              dir_fd=self.dir_fd)  # fmt: skip
        except BaseException:
            self._dirs.__exit__(None, None, None)
            raise

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except OSError as e:
                if e.errno == 28:  # ENOSPC
                    raise ContentError(507, "the volume is full") from None
                raise
            view = view[n:]

    def commit(self) -> dict[str, Any]:
        try:
            os.fchown(self.fd, *_ids(self.owner))
            if self.owner.mode is not None:
                os.fchmod(self.fd, self.owner.mode & 0o7777)  # past the umask
            # A name only for the instant before the rename (linkat cannot replace a file),
            # short whatever the target's length: a name may take all of NAME_MAX itself.
            tmp = f".upload-{os.urandom(6).hex()}"
            os.link(f"/proc/self/fd/{self.fd}", tmp, dst_dir_fd=self.dir_fd)
            try:
                os.rename(tmp, self.parts[-1], src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=self.dir_fd)
                raise
            return _stat_at(self.dir_fd, self.parts)
        finally:
            self.close()

    def close(self) -> None:
        """Gives up: the unnamed file goes with its descriptor, the target is untouched (after
        a commit: nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.fd >= 0:
                fd, self.fd = self.fd, -1
                os.close(fd)
        finally:
            self._dirs.__exit__(None, None, None)  # the volume's directory fds, whatever failed


@contextlib.contextmanager
def _existing(
    root: Path, path: str, at_root: str
) -> Iterator[tuple[int, list[str], os.stat_result]]:
    """An entry below the root that exists: its directory's descriptor, its path parts and its
    own stat (a symlink's, not its target's); ``at_root`` is why the root itself is refused."""
    parts = _parts(path)
    if not parts:
        raise ContentError(400, at_root)
    with _open_dir(root, parts[:-1]) as fd:
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise ContentError(404, f"{_display(parts)} not found") from None
        yield fd, parts, st


def remove(root: Path, path: str) -> None:
    at_root = "the volume's root cannot be removed (delete the volume)"
    with _existing(root, path, at_root) as (fd, parts, st):
        name = parts[-1]
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=fd)  # the fd-based rmtree never follows symlinks
        else:
            os.unlink(name, dir_fd=fd)


def update(root: Path, path: str, owner: Owner) -> dict[str, Any]:
    """Change an entry's owner and mode (a symlink's own owner; its mode cannot change)."""
    with _existing(root, path, "the volume's root keeps its owner and mode") as (fd, parts, st):
        name = parts[-1]
        if owner.uid is not None or owner.gid is not None:
            uid = -1 if owner.uid is None else owner.uid
            gid = -1 if owner.gid is None else owner.gid
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
        if owner.mode is not None:
            if stat.S_ISLNK(st.st_mode):
                raise ContentError(400, f"{_display(parts)} is a symlink: its mode cannot change")
            _chmod(fd, name, owner.mode)
        return _stat_at(fd, parts)
