"""``filesystem.Filesystem`` RPC handlers.

The requesting user decides how relative paths resolve, and every filesystem call runs under
that user's credentials (:mod:`..creds`): envd is root, but ``user`` gets ``permission_denied``
where a shell of ``user`` would get EACCES, and what it creates is its own.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import AsyncIterator

from ..._connect.errors import Code, ConnectError
from ..._proto.filesystem import filesystem_pb2 as pb
from ..creds import as_user
from ..rpc import Kind, RpcContext, RpcMethod
from ..state import EnvdState
from ..users import User, make_dirs, resolve_path, resolve_user, username_from_basic
from .entries import entry_info
from .watcher import DirWatcher


def os_error(exc: OSError, path: str) -> ConnectError:
    """One translation of filesystem errors into Connect codes for every handler."""
    if exc.errno == errno.ENOENT:
        return ConnectError(Code.NOT_FOUND, f"path '{path}' does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ConnectError(Code.PERMISSION_DENIED, f"permission denied: '{path}'")
    if exc.errno == errno.ENOTDIR:
        return ConnectError(Code.INVALID_ARGUMENT, f"a component of '{path}' is not a directory")
    if exc.errno == errno.EEXIST:
        return ConnectError(Code.ALREADY_EXISTS, f"path '{path}' already exists")
    if exc.errno == errno.ENOSPC:  # (not RESOURCE_EXHAUSTED: the SDK calls that a rate limit)
        return ConnectError(Code.INTERNAL, f"not enough disk space for '{path}'")
    if exc.errno == errno.ENAMETOOLONG:
        return ConnectError(Code.INVALID_ARGUMENT, f"path too long: '{path}'")
    return ConnectError(Code.INTERNAL, f"{exc.strerror or exc}: '{path}'")


def _list(root: str, shown_root: str, depth: int) -> list[pb.EntryInfo]:
    entries: list[pb.EntryInfo] = []

    def walk(real: str, shown: str, level: int) -> None:
        try:
            with os.scandir(real) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            return  # unreadable subdirectory: list what we can
        for item in items:
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            shown_path = os.path.join(shown, item.name)
            entries.append(entry_info(item.path, st, item.name))
            entries[-1].path = shown_path
            if level < depth and item.is_dir(follow_symlinks=False):
                walk(item.path, shown_path, level + 1)

    walk(root, shown_root, 1)
    return entries


class FilesystemService:
    def __init__(self, state: EnvdState) -> None:
        self.state = state
        self._watchers: dict[str, DirWatcher] = {}

    def methods(self) -> dict[str, RpcMethod]:
        def keepalive() -> pb.WatchDirResponse:
            return pb.WatchDirResponse(keepalive=pb.WatchDirResponse.KeepAlive())

        p = "/filesystem.Filesystem/"
        return {
            p + "Stat": RpcMethod(Kind.UNARY, pb.StatRequest, self.stat),
            p + "MakeDir": RpcMethod(Kind.UNARY, pb.MakeDirRequest, self.make_dir),
            p + "Move": RpcMethod(Kind.UNARY, pb.MoveRequest, self.move),
            p + "ListDir": RpcMethod(Kind.UNARY, pb.ListDirRequest, self.list_dir),
            p + "Remove": RpcMethod(Kind.UNARY, pb.RemoveRequest, self.remove),
            p + "WatchDir": RpcMethod(
                Kind.SERVER_STREAM, pb.WatchDirRequest, self.watch_dir, keepalive
            ),
            p + "CreateWatcher": RpcMethod(
                Kind.UNARY, pb.CreateWatcherRequest, self.create_watcher
            ),
            p + "GetWatcherEvents": RpcMethod(
                Kind.UNARY, pb.GetWatcherEventsRequest, self.get_watcher_events
            ),
            p + "RemoveWatcher": RpcMethod(
                Kind.UNARY, pb.RemoveWatcherRequest, self.remove_watcher
            ),
        }

    def _user_path(self, ctx: RpcContext, path: str) -> tuple[User, str]:
        user = resolve_user(self.state, username_from_basic(ctx.headers))
        return user, resolve_path(path, user)

    async def stat(self, request: pb.StatRequest, ctx: RpcContext) -> pb.StatResponse:
        user, path = self._user_path(ctx, request.path)
        return pb.StatResponse(entry=await as_user(user, _stat, path))

    async def make_dir(self, request: pb.MakeDirRequest, ctx: RpcContext) -> pb.MakeDirResponse:
        user, path = self._user_path(ctx, request.path)
        return pb.MakeDirResponse(entry=await as_user(user, _make_dir, path))

    async def move(self, request: pb.MoveRequest, ctx: RpcContext) -> pb.MoveResponse:
        user, source = self._user_path(ctx, request.source)
        destination = resolve_path(request.destination, user)
        return pb.MoveResponse(entry=await as_user(user, _move, source, destination))

    async def list_dir(self, request: pb.ListDirRequest, ctx: RpcContext) -> pb.ListDirResponse:
        user, path = self._user_path(ctx, request.path)
        depth = max(request.depth, 1)
        return pb.ListDirResponse(entries=await as_user(user, _list_dir, path, depth))

    async def remove(self, request: pb.RemoveRequest, ctx: RpcContext) -> pb.RemoveResponse:
        user, path = self._user_path(ctx, request.path)
        if not path.strip("/"):  # ("//" is another spelling of it)
            raise ConnectError(Code.INVALID_ARGUMENT, "refusing to remove '/'")
        await as_user(user, _remove, path)
        return pb.RemoveResponse()

    async def _watcher(
        self, ctx: RpcContext, request: pb.WatchDirRequest | pb.CreateWatcherRequest
    ) -> DirWatcher:
        user, path = self._user_path(ctx, request.path)
        try:
            return await DirWatcher.open(
                path, request.recursive, request.include_entry, request.allow_network_mounts, user
            )
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # (inotify_add_watch's, not the disk's)
                raise ConnectError(
                    Code.INTERNAL, f"cannot watch '{path}': the inotify watch limit is reached"
                ) from exc
            raise os_error(exc, path) from exc

    async def watch_dir(
        self, request: pb.WatchDirRequest, ctx: RpcContext
    ) -> AsyncIterator[pb.WatchDirResponse]:
        watcher = await self._watcher(ctx, request)
        try:
            yield pb.WatchDirResponse(start=pb.WatchDirResponse.StartEvent())
            while True:
                event = await watcher.queue.get()
                yield pb.WatchDirResponse(filesystem=event)
        finally:
            watcher.close()

    async def create_watcher(
        self, request: pb.CreateWatcherRequest, ctx: RpcContext
    ) -> pb.CreateWatcherResponse:
        watcher_id = uuid.uuid4().hex
        self._watchers[watcher_id] = await self._watcher(ctx, request)
        return pb.CreateWatcherResponse(watcher_id=watcher_id)

    def _get_watcher(self, watcher_id: str) -> DirWatcher:
        watcher = self._watchers.get(watcher_id)
        if watcher is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher '{watcher_id}' not found")
        return watcher

    async def get_watcher_events(
        self, request: pb.GetWatcherEventsRequest, ctx: RpcContext
    ) -> pb.GetWatcherEventsResponse:
        return pb.GetWatcherEventsResponse(events=self._get_watcher(request.watcher_id).drain())

    async def remove_watcher(
        self, request: pb.RemoveWatcherRequest, ctx: RpcContext
    ) -> pb.RemoveWatcherResponse:
        self._get_watcher(request.watcher_id).close()
        del self._watchers[request.watcher_id]
        return pb.RemoveWatcherResponse()

    def close(self) -> None:
        for watcher in self._watchers.values():
            watcher.close()
        self._watchers.clear()


# The blocking bodies of the handlers; each runs in a worker holding the user's credentials.


def _stat(path: str) -> pb.EntryInfo:
    try:
        return entry_info(path)
    except OSError as exc:
        raise os_error(exc, path) from exc


def _make_dir(path: str) -> pb.EntryInfo:
    if os.path.lexists(path):
        if os.path.isdir(path):
            raise ConnectError(Code.ALREADY_EXISTS, f"directory '{path}' already exists")
        raise ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' exists and is not a directory")
    try:
        make_dirs(path)
        return entry_info(path)
    except OSError as exc:
        raise os_error(exc, path) from exc


def _move(source: str, destination: str) -> pb.EntryInfo:
    try:
        os.lstat(source)
    except FileNotFoundError:
        raise ConnectError(Code.NOT_FOUND, f"source '{source}' does not exist") from None
    except OSError as exc:
        raise os_error(exc, source) from exc
    try:
        make_dirs(os.path.dirname(destination))
        try:
            os.rename(source, destination)  # a rename's own rules, as E2B's envd (Go)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            if os.path.lexists(destination):  # (shutil.move would move the source into it)
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST)) from exc
            shutil.move(source, destination)  # another filesystem: copied, then removed
        return entry_info(destination)
    except OSError as exc:
        raise os_error(exc, destination) from exc


def _list_dir(path: str, depth: int) -> list[pb.EntryInfo]:
    try:
        real = os.path.realpath(path, strict=True)
        if not os.path.isdir(real):
            raise ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' is not a directory")
        with os.scandir(real):
            pass  # the directory itself must be readable: an error here is the caller's answer
    except OSError as exc:
        raise os_error(exc, path) from exc
    return _list(real, path, depth)


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass  # remove-all semantics: a missing path is already removed
    except OSError as exc:
        raise os_error(exc, path) from exc
