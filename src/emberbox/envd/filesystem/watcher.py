"""inotify-based directory watching, as fsnotify reports it (create/write/remove/rename/chmod)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from inotify_simple import INotify
from inotify_simple import flags as F

from ..._connect.errors import Code, ConnectError
from ..._proto.filesystem import filesystem_pb2 as pb
from .entries import entry_info

_MASK = (
    F.CREATE
    | F.MODIFY
    | F.DELETE
    | F.DELETE_SELF
    | F.MOVED_FROM
    | F.MOVED_TO
    | F.MOVE_SELF
    | F.ATTRIB
    | F.ONLYDIR
)
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "9p", "ceph", "glusterfs"}
MAX_QUEUED_EVENTS = 10_000


def _event_types(mask: int) -> list[pb.EventType]:
    types: list[pb.EventType] = []
    if mask & (F.CREATE | F.MOVED_TO):
        types.append(pb.EVENT_TYPE_CREATE)
    if mask & F.MODIFY:
        types.append(pb.EVENT_TYPE_WRITE)
    if mask & (F.DELETE | F.DELETE_SELF):
        types.append(pb.EVENT_TYPE_REMOVE)
    if mask & (F.MOVED_FROM | F.MOVE_SELF):
        types.append(pb.EVENT_TYPE_RENAME)
    if mask & F.ATTRIB:
        types.append(pb.EVENT_TYPE_CHMOD)
    return types


def _fs_type(path: str) -> str | None:
    """Filesystem type of the mount holding ``path``, from /proc/self/mounts (longest prefix)."""
    best, best_type = "", None
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) < 3:
                continue
            mount_point = parts[1].replace("\\040", " ")
            if (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")) and len(
                mount_point
            ) >= len(best):
                best, best_type = mount_point, parts[2]
    return best_type


def check_watchable(path: str, allow_network_mounts: bool) -> None:
    if not os.path.exists(path):
        raise ConnectError(Code.NOT_FOUND, f"path '{path}' does not exist")
    if not os.path.isdir(path):
        raise ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' is not a directory")
    if not allow_network_mounts and _fs_type(path) in _NETWORK_FS:
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"path '{path}' is on a network filesystem; set allow_network_mounts to watch it",
        )


class DirWatcher:
    """Events under one directory (optionally recursive), names relative to that directory."""

    def __init__(self, root: str, recursive: bool, include_entry: bool) -> None:
        self.root = root
        self.recursive = recursive
        self.include_entry = include_entry
        self.queue: asyncio.Queue[pb.FilesystemEvent] = asyncio.Queue(MAX_QUEUED_EVENTS)
        self.dropped = 0
        self._inotify = INotify()
        self._dirs: dict[int, str] = {}
        self._loop = asyncio.get_running_loop()
        self._add_tree(root)
        self._loop.add_reader(self._inotify.fileno(), self._readable)

    def _add(self, path: str) -> None:
        try:
            wd = self._inotify.add_watch(path, _MASK)
        except OSError:
            return  # vanished or unreadable in the meantime
        self._dirs[wd] = path

    def _add_tree(self, path: str) -> None:
        self._add(path)
        if not self.recursive:
            return
        for dirpath, dirnames, _ in os.walk(path):
            for dirname in dirnames:
                self._add(os.path.join(dirpath, dirname))

    def _adopt_new_dir(self, path: str) -> None:
        """Watch a directory that just appeared, and report what was created in it before the
        watch existed (``mkdir -p a/b && touch a/b/f`` outruns inotify otherwise)."""
        self._add_tree(path)
        for dirpath, dirnames, filenames in os.walk(path):
            for entry in (*dirnames, *filenames):
                full = os.path.join(dirpath, entry)
                self._emit(os.path.relpath(full, self.root), pb.EVENT_TYPE_CREATE, full)

    def _readable(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except OSError:
            return
        for event in events:
            base = self._dirs.get(event.wd)
            if base is None:
                continue
            if event.mask & F.IGNORED:
                self._dirs.pop(event.wd, None)
                continue
            full = os.path.join(base, event.name) if event.name else base
            if full == self.root and not event.name:
                continue  # events about the watched directory itself
            name = os.path.relpath(full, self.root)
            for event_type in _event_types(event.mask):
                self._emit(name, event_type, full)
            if self.recursive and event.mask & F.ISDIR and event.mask & (F.CREATE | F.MOVED_TO):
                self._adopt_new_dir(full)

    def _emit(self, name: str, event_type: pb.EventType, full: str) -> None:
        message = pb.FilesystemEvent(name=name, type=event_type)
        if self.include_entry and event_type in (
            pb.EVENT_TYPE_CREATE,
            pb.EVENT_TYPE_WRITE,
            pb.EVENT_TYPE_CHMOD,
        ):
            with contextlib.suppress(OSError):
                message.entry.CopyFrom(entry_info(full))
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1

    def drain(self) -> list[pb.FilesystemEvent]:
        events = []
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._inotify.fileno())
        with contextlib.suppress(OSError):
            self._inotify.close()
