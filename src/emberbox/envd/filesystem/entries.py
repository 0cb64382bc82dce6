"""``EntryInfo`` from ``lstat``: type, size, mode, owner, mtime, symlink target, xattr metadata."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from functools import lru_cache

from ..._proto.filesystem import filesystem_pb2 as pb

METADATA_XATTR_PREFIX = "user.e2b."


@lru_cache(maxsize=256)
def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@lru_cache(maxsize=256)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _file_type(mode: int) -> pb.FileType:
    if stat.S_ISDIR(mode):
        return pb.FILE_TYPE_DIRECTORY
    if stat.S_ISREG(mode):
        return pb.FILE_TYPE_FILE
    if stat.S_ISLNK(mode):
        return pb.FILE_TYPE_SYMLINK
    return pb.FILE_TYPE_UNSPECIFIED


def read_metadata(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    metadata: dict[str, str] = {}
    for name in names:
        if name.startswith(METADATA_XATTR_PREFIX):
            try:
                value = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue
            metadata[name[len(METADATA_XATTR_PREFIX) :]] = value.decode(errors="replace")
    return metadata


def entry_info(
    path: str, st: os.stat_result | None = None, name: str | None = None
) -> pb.EntryInfo:
    """Describe ``path`` without following it; a symlink is reported as such, with its target.

    Symlinks carry both the old (``type`` = SYMLINK) and new (``isSymlink``) markers so SDKs
    before and after 2.63 both see a link.
    """
    st = st if st is not None else os.lstat(path)
    entry = pb.EntryInfo(
        name=name if name is not None else (os.path.basename(path) or path),
        type=_file_type(st.st_mode),
        path=path,
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        permissions=stat.filemode(st.st_mode),
        owner=_owner(st.st_uid),
        group=_group(st.st_gid),
    )
    entry.modified_time.FromNanoseconds(st.st_mtime_ns)
    if stat.S_ISLNK(st.st_mode):
        entry.is_symlink = True
        try:
            entry.symlink_target = os.path.realpath(path)
        except OSError:
            entry.symlink_target = os.readlink(path)
    metadata = read_metadata(path)
    if metadata:
        entry.metadata.update(metadata)
    return entry
