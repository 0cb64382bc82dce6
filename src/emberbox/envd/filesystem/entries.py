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
    """Describe ``path`` (``st`` is its ``lstat``); call it with the requesting user's ids.

    A symlink is described the way E2B's envd does it since EntryInfo carried more than a name:
    ``type`` and ``mode`` are the target's, ``symlink_target`` is the resolved target, and
    size, owner and ``permissions`` are the link's own. ``is_symlink`` marks the link too: SDKs
    that read it (Python 2.63) show SYMLINK, older ones and the JS SDK show the target's type.
    A link whose target cannot be followed (dangling, looping, or where the user may not look)
    is ``SYMLINK`` with its own mode, where E2B sends ``UNSPECIFIED``: both SDKs' ``list`` drop
    entries of unknown type, and a dangling link should still be seen (``ls`` shows it).
    Nothing here raises for a bad link, so one never breaks a stat or a listing.
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
        entry.symlink_target = os.path.realpath(path)  # non-strict: never raises
        try:
            target = os.stat(path)
        except OSError:
            entry.type = pb.FILE_TYPE_SYMLINK
        else:
            entry.type = _file_type(target.st_mode)
            entry.mode = stat.S_IMODE(target.st_mode)
    metadata = read_metadata(path)
    if metadata:
        entry.metadata.update(metadata)
    return entry
