"""inotify-based directory watching, as fsnotify reports it (create/write/remove/rename/chmod).

Watches are placed, new subdirectories adopted and entries described under the requesting
user's credentials, so a watch shows only what that user could list: inotify itself checks
read permission when a watch is added. The event loop only reads raw events; one pump task per
watcher turns them into messages in a credentialed worker, batch after batch, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat

from inotify_simple import Event, INotify
from inotify_simple import flags as F

from ..._connect.errors import Code, ConnectError
from ..._proto.filesystem import filesystem_pb2 as pb
from ..creds import as_user
from ..users import User
from .entries import entry_info

log = logging.getLogger("emberbox.envd.watcher")

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
# Raw events read but not yet translated: past this the inotify fd goes unread until the pump
# catches up, and the kernel's own bounded queue (it overflows, dropping) takes the rest.
MAX_RAW_EVENTS = 10_000


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
    """Raises OSError (mapped by the service) or a ConnectError; call it as the user."""
    if not stat.S_ISDIR(os.stat(path).st_mode):
        raise ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' is not a directory")
    if not allow_network_mounts and _fs_type(path) in _NETWORK_FS:
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"path '{path}' is on a network filesystem; set allow_network_mounts to watch it",
        )


class DirWatcher:
    """Events under one directory (optionally recursive), names relative to that directory."""

    def __init__(self, root: str, recursive: bool, include_entry: bool, user: User) -> None:
        self.root = root
        self.recursive = recursive
        self.include_entry = include_entry
        self.user = user
        self.queue: asyncio.Queue[pb.FilesystemEvent] = asyncio.Queue(MAX_QUEUED_EVENTS)
        self.dropped = 0
        self._inotify = INotify()
        self._dirs: dict[int, str] = {}  # touched only by the worker running _add_tree/_translate
        self._raw: list[Event] = []
        self._reading = False  # the loop reads the inotify fd (not while _raw is full)
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._pump_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, root: str, recursive: bool, include_entry: bool, network_ok: bool, user: User
    ) -> DirWatcher:
        """Check ``root`` and watch it as ``user``; OSError when the user may not."""
        await as_user(user, check_watchable, root, network_ok)
        watcher = cls(root, recursive, include_entry, user)
        try:
            await as_user(user, watcher._add_tree, root, True)
        except BaseException:
            watcher.close()
            raise
        watcher._read(True)
        watcher._pump_task = watcher._loop.create_task(watcher._pump())
        return watcher

    def _add(self, path: str, required: bool = False) -> None:
        try:
            wd = self._inotify.add_watch(path, _MASK)
        except (OSError, ValueError):  # vanished, unreadable, or the watcher closed meanwhile
            if required:
                raise
            return
        self._dirs[wd] = path

    def _add_tree(self, path: str, required: bool = False) -> None:
        self._add(path, required)
        if not self.recursive:
            return
        for dirpath, dirnames, _ in os.walk(path):
            for dirname in dirnames:
                self._add(os.path.join(dirpath, dirname))

    def _adopt_new_dir(self, path: str, out: list[pb.FilesystemEvent]) -> None:
        """Watch a directory that just appeared, and report what was created in it before the
        watch existed (``mkdir -p a/b && touch a/b/f`` outruns inotify otherwise)."""
        self._add_tree(path)
        for dirpath, dirnames, filenames in os.walk(path):
            for entry in (*dirnames, *filenames):
                full = os.path.join(dirpath, entry)
                name = os.path.relpath(full, self.root)
                out.append(self._message(name, pb.EVENT_TYPE_CREATE, full))

    def _read(self, on: bool) -> None:
        if on and not self._reading:
            self._loop.add_reader(self._inotify.fileno(), self._readable)
        elif not on and self._reading:
            self._loop.remove_reader(self._inotify.fileno())
        self._reading = on

    def _readable(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except OSError:
            return
        if events:
            self._raw.extend(events)
            self._wake.set()
            if len(self._raw) >= MAX_RAW_EVENTS:
                self._read(False)

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            raw, self._raw = self._raw, []
            self._read(True)
            try:
                messages = await as_user(self.user, self._translate, raw)
            except Exception:
                log.exception("dropping %d inotify events under %s", len(raw), self.root)
                continue
            for message in messages:
                try:
                    self.queue.put_nowait(message)
                except asyncio.QueueFull:
                    self.dropped += 1

    def _translate(self, raw: list[Event]) -> list[pb.FilesystemEvent]:
        out: list[pb.FilesystemEvent] = []
        for event in raw:
            if event.mask & F.Q_OVERFLOW:  # (the kernel's queue was full: some are lost)
                self.dropped += 1
                continue
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
                out.append(self._message(name, event_type, full))
            if self.recursive and event.mask & F.ISDIR and event.mask & (F.CREATE | F.MOVED_TO):
                self._adopt_new_dir(full, out)
        return out

    def _message(self, name: str, event_type: pb.EventType, full: str) -> pb.FilesystemEvent:
        message = pb.FilesystemEvent(name=name, type=event_type)
        if self.include_entry and event_type in (
            pb.EVENT_TYPE_CREATE,
            pb.EVENT_TYPE_WRITE,
            pb.EVENT_TYPE_CHMOD,
        ):
            with contextlib.suppress(OSError):
                message.entry.CopyFrom(entry_info(full))
        return message

    def drain(self) -> list[pb.FilesystemEvent]:
        events = []
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events

    def close(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
        with contextlib.suppress(Exception):
            self._read(False)
        with contextlib.suppress(OSError):
            self._inotify.close()
