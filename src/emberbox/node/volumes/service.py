"""The node's volumes: their disks, when they are mounted, and the content calls on them.

A volume is mounted when something needs it (a sandbox's create, a content call) and stays
mounted while anything may use it: runsc's gofer holds the mount open, and mounting the image
a second time beside a live mount would corrupt it, so every mount, unmount and delete of one
volume runs under its lock, and none of them touches a volume that is *in use*: mounted by a
sandbox this node holds, held by a create still starting, by a content call running, or by an
open read or upload. At close, the node unmounts the volumes nothing uses.

Reads and uploads are handles named by the caller (``read_id``, ``write_id``): a read keeps
the file it opened, so a file replaced meanwhile is never mixed in; an upload writes to one
temporary beside the target, renamed over it at the last chunk. A handle left without a call
for ``IDLE_S`` is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from ...host import rootfs
from ...host.errors import HostError
from ...runtimes.base import Runtime
from ...vocabulary import is_volume_id
from ..records import ALL_VOLUMES
from . import contents
from .contents import ContentError, FileWriter, Owner
from .store import VolumeStore

log = logging.getLogger("emberbox.node.volumes")

IDLE_S = 60.0
READ_MAX = 1 << 20


class VolumeMissing(LookupError):
    """No such volume on this node."""


class VolumeExists(FileExistsError):
    """A volume of that id is on this node already."""


class VolumeBusy(Exception):
    """Something on this node uses the volume."""


class VolumeUnmountable(OSError):
    """The volume's image does not mount (the node's log says why)."""


@dataclass
class _Handle:
    volume_id: str
    path: str
    touched: float = field(default_factory=time.monotonic)
    in_flight: bool = False  # a thread works on it: whoever owns that closes it
    dropped: bool = False


@dataclass
class _Write(_Handle):
    writer: FileWriter | None = None
    offset: int = 0


@dataclass
class _Read(_Handle):
    fd: int = -1
    size: int = 0


class NodeVolumes:
    """**Parameters:** data_dir - the node's; in_use - the volume ids the node's sandboxes
    mount right now."""

    @classmethod
    def for_runtime(
        cls, data_dir: Path, runtime: Runtime, in_use: Callable[[], Collection[str]]
    ) -> NodeVolumes | None:
        """None when the runtime cannot bind volumes (the node then refuses them)."""
        return cls(data_dir, in_use) if runtime.capabilities.volumes else None

    def __init__(self, data_dir: Path, in_use: Callable[[], Collection[str]]) -> None:
        self.store = VolumeStore(data_dir)
        self._in_use = in_use
        self._locks: dict[str, asyncio.Lock] = {}
        self._holds: collections.Counter[str] = collections.Counter()
        self._writes: dict[str, _Write] = {}
        self._reads: dict[str, _Read] = {}

    def _lock(self, volume_id: str) -> asyncio.Lock:
        if not is_volume_id(volume_id):
            raise ValueError(f"not a volume id: {volume_id!r}")
        return self._locks.setdefault(volume_id, asyncio.Lock())

    def _used(self, volume_id: str) -> bool:
        sandboxes = self._in_use()
        return volume_id in sandboxes or ALL_VOLUMES in sandboxes or self._holds[volume_id] > 0

    async def create(self, volume_id: str, size_mb: int) -> None:
        if not 16 <= size_mb <= 1 << 20:
            raise ValueError("a volume's size is 16 MiB to 1 TiB")
        async with self._lock(volume_id):
            if self.store.exists(volume_id):
                raise VolumeExists(f"volume {volume_id} exists on this node")
            await self.store.create(volume_id, size_mb)

    async def delete(self, volume_id: str) -> None:
        self._expire()
        async with self._lock(volume_id):
            if self._used(volume_id):
                raise VolumeBusy(f"volume {volume_id} is in use on this node (a sandbox mounts "
                                 "it, or a content call runs)")  # fmt: skip
            await self.store.remove(volume_id)
        self._locks.pop(volume_id, None)

    async def _mounted(self, volume_id: str) -> Path:
        """Under the volume's lock: its directory, mounted (now, if it was not)."""
        if not self.store.exists(volume_id):
            raise VolumeMissing(f"volume {volume_id} is not on this node")
        data = self.store.data(volume_id)
        if not rootfs.mounted(data):
            try:
                await self.store.mount(volume_id)
            except HostError as e:
                raise VolumeUnmountable(f"volume {volume_id} does not mount: {e}") from None
        if not rootfs.mounted(data):  # never the bare directory: it has no quota
            raise VolumeUnmountable(f"volume {volume_id} does not mount (see the node's log)")
        return data

    async def _hold(self, volume_id: str) -> Path:
        async with self._lock(volume_id):
            data = await self._mounted(volume_id)
            self._holds[volume_id] += 1
            return data

    def _release(self, volume_id: str) -> None:
        self._holds[volume_id] -= 1
        if self._holds[volume_id] <= 0:
            del self._holds[volume_id]

    @contextlib.asynccontextmanager
    async def using(self, volume_ids: Sequence[str]) -> AsyncIterator[list[Path]]:
        """The volumes' directories, mounted and in use until the block ends (a create holds
        them until the node's record of the sandbox names them)."""
        held: list[str] = []
        try:
            roots = []
            for volume_id in volume_ids:
                roots.append(await self._hold(volume_id))
                held.append(volume_id)
            yield roots
        finally:
            for volume_id in held:
                self._release(volume_id)

    async def close(self) -> None:
        for handles in (self._writes, self._reads):
            for key in list(handles):
                self._drop(handles, key)
        for volume_id in self.store.ids():
            async with self._lock(volume_id):
                if self._used(volume_id):
                    continue
                try:
                    await self.store.unmount(volume_id)
                except Exception as e:  # it is mounted again only if it is not mounted
                    log.warning("volume %s stays mounted: %s", volume_id, e)

    # ---- content ---------------------------------------------------------------------------

    async def call(self, volume_id: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(root, *args)`` in a thread, on the mounted volume, which stays in use meanwhile."""
        self._expire()
        async with self.using([volume_id]) as (root,):
            return await run_in_threadpool(fn, root, *args)

    async def read(
        self, volume_id: str, path: str, read_id: str, offset: int, length: int, done: bool
    ) -> tuple[bytes, int]:
        """A piece of the file the read opened at offset 0, and its size then."""
        self._expire()
        _check_id(read_id)
        if done:
            self._drop(self._reads, read_id)
            return b"", 0
        if offset < 0 or not 0 < length <= READ_MAX:
            raise ContentError(400, f"a read is 1 to {READ_MAX} bytes from an offset >= 0")
        current = self._reads.get(read_id)
        if current is None:
            if offset != 0:
                raise ContentError(400, f"read {read_id} is not open (it starts at offset 0)")
            fd, size = await self._opened(volume_id, contents.open_file, path)
            current = self._reads[read_id] = _Read(volume_id, path, fd=fd, size=size)
        elif (current.volume_id, current.path) != (volume_id, path):
            raise ContentError(400, f"read {read_id} is of another file")
        data = await self._work(self._reads, read_id, current, os.pread, current.fd,
                                max(0, min(length, current.size - offset)), offset)  # fmt: skip
        if not data or offset + len(data) >= current.size:
            self._drop(self._reads, read_id)
        return data, current.size

    async def write(
        self,
        volume_id: str,
        path: str,
        write_id: str,
        offset: int,
        data: bytes,
        *,
        last: bool = False,
        abort: bool = False,
        owner: Owner | None = None,
        parents: bool = False,
    ) -> dict[str, Any] | None:
        """One chunk of an upload; the last answers the new entry."""
        self._expire()
        _check_id(write_id)
        if abort:
            self._drop(self._writes, write_id)
            return None
        current = self._writes.get(write_id)
        if current is None:
            if offset != 0:
                raise ContentError(400, f"write {write_id} is not open (it starts at offset 0)")
            writer = await self._opened(volume_id, FileWriter, path, owner or Owner(), parents)
            current = self._writes[write_id] = _Write(volume_id, path, writer=writer)
        elif (current.volume_id, current.path) != (volume_id, path) or offset != current.offset:
            self._drop(self._writes, write_id)
            raise ContentError(400, f"write {write_id}: chunk out of order; start again")
        assert current.writer is not None
        try:
            if data:
                await self._work(self._writes, write_id, current, current.writer.write, data)
            current.offset += len(data)
            if not last:
                return None
            entry: dict[str, Any] = await self._work(
                self._writes, write_id, current, current.writer.commit
            )
            return entry
        finally:
            if last:
                self._drop(self._writes, write_id)

    async def _opened(self, volume_id: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(root, *args)`` in a thread, opening a handle that holds the volume until it is
        dropped; the hold goes again if the opening fails."""
        root = await self._hold(volume_id)
        try:
            return await run_in_threadpool(fn, root, *args)
        except BaseException:
            self._release(volume_id)
            raise

    async def _work(
        self, handles: dict[str, Any], key: str, handle: _Handle, fn: Callable[..., Any], *args: Any
    ) -> Any:
        """``fn`` in a thread on an open handle: a drop meanwhile waits for it to return, so a
        descriptor is never closed (and its number reused) under a thread still using it."""
        handle.in_flight, handle.touched = True, time.monotonic()
        try:
            result = await run_in_threadpool(fn, *args)
        except BaseException:
            handle.in_flight = False
            if handle.dropped:  # (dropped meanwhile: no longer in ``handles``, closed here)
                self._close(handle)
            else:
                self._drop(handles, key)
            raise
        handle.in_flight = False
        if handle.dropped:
            self._close(handle)
            raise ContentError(400, f"{key} was dropped (the volume is going, or it idled)")
        return result

    def _drop(self, handles: dict[str, Any], key: str) -> None:
        handle = handles.pop(key, None)
        if handle is None:
            return
        handle.dropped = True
        if not handle.in_flight:
            self._close(handle)

    def _close(self, handle: _Handle) -> None:
        if isinstance(handle, _Write) and handle.writer is not None:
            with contextlib.suppress(OSError):
                handle.writer.close()
            handle.writer = None
        elif isinstance(handle, _Read) and handle.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(handle.fd)
            handle.fd = -1
        else:
            return
        self._release(handle.volume_id)

    def _expire(self) -> None:
        cutoff = time.monotonic() - IDLE_S
        for handles in (self._writes, self._reads):
            for key, handle in list(handles.items()):
                if handle.touched < cutoff and not handle.in_flight:
                    log.info("dropping %s of %s: no call for a minute", key, handle.path)
                    self._drop(handles, key)


def _check_id(handle_id: str) -> None:
    if not handle_id or len(handle_id) > 64:
        raise ContentError(400, "a read or write needs an id of at most 64 characters")
