"""``sandbox.files``: envd's ``filesystem.Filesystem`` RPCs plus streamed ``/files`` transfers.

Uploads and downloads are streamed in 1 MiB chunks: a 1 GiB file never sits in client memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Literal, overload

import httpx

from ..._proto.filesystem import filesystem_pb2 as pb
from .. import _errors
from .._background import AsyncBackground
from .._base import basic_auth
from ..exceptions import FileNotFoundException, SandboxException
from ..models import EntryInfo, FilesystemEvent, SupportsRead, WriteEntry, WriteInfo
from .rpc import AsyncRpc

CHUNK = 1024 * 1024
WriteData = str | bytes | SupportsRead | AsyncIterator[bytes]


async def iter_chunks(data: WriteData) -> AsyncIterator[bytes]:
    if isinstance(data, str):
        yield data.encode()
    elif isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
    elif isinstance(data, SupportsRead):
        while chunk := data.read(CHUNK):
            yield chunk
    else:
        async for chunk in data:
            yield chunk


class AsyncWatchHandle:
    """Events under a watched directory; iterate, or pass ``on_event`` to have them pushed."""

    def __init__(
        self,
        events: AsyncIterator[pb.WatchDirResponse],
        on_event: Callable[[FilesystemEvent], object] | None,
    ) -> None:
        self._events = events
        self._stopped = False
        self._consumer: AsyncBackground | None = None
        if on_event is not None:
            self._consumer = AsyncBackground(lambda: self._deliver(on_event))

    async def __aiter__(self) -> AsyncIterator[FilesystemEvent]:
        async for message in self._events:
            if self._stopped:
                return
            if message.WhichOneof("event") == "filesystem":
                event = FilesystemEvent.from_proto(message.filesystem)
                if event is not None:
                    yield event

    async def _deliver(self, on_event: Callable[[FilesystemEvent], object]) -> None:
        async for event in self:
            on_event(event)

    async def stop(self) -> None:
        self._stopped = True
        if self._consumer is not None:
            await self._consumer.cancel()
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()


class AsyncFilesystem:
    def __init__(self, rpc: AsyncRpc) -> None:
        self._rpc = rpc

    def _params(self, path: str, user: str | None) -> dict[str, str]:
        return {"path": path, **({"username": user} if user else {})}

    @overload
    async def read(
        self, path: str, format: Literal["text"] = "text", user: str | None = None
    ) -> str: ...
    @overload
    async def read(self, path: str, format: Literal["bytes"], user: str | None = None) -> bytes: ...
    @overload
    async def read(
        self, path: str, format: Literal["stream"], user: str | None = None
    ) -> AsyncIterator[bytes]: ...

    async def read(
        self, path: str, format: str = "text", user: str | None = None
    ) -> str | bytes | AsyncIterator[bytes]:
        """Read a file as text, bytes, or a stream of chunks (kept off the client's heap)."""
        if format == "stream":
            return self._stream(path, user)
        try:
            response = await self._rpc.http.get(
                f"{self._rpc.base_url}/files",
                params=self._params(path, user),
                headers=self._rpc.headers,
            )
        except httpx.HTTPError as exc:
            raise _errors.from_transport(exc, f"read {path}") from exc
        if response.status_code != 200:
            raise _errors.from_http(response, what=f"read {path}", files=True)
        return response.text if format == "text" else response.content

    async def _stream(self, path: str, user: str | None) -> AsyncIterator[bytes]:
        try:
            async with self._rpc.http.stream(
                "GET",
                f"{self._rpc.base_url}/files",
                params=self._params(path, user),
                headers=self._rpc.headers,
                timeout=httpx.Timeout(60.0),
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _errors.from_http(response, what=f"read {path}", files=True)
                async for chunk in response.aiter_bytes(CHUNK):
                    yield chunk
        except httpx.HTTPError as exc:
            raise _errors.from_transport(exc, f"read {path}") from exc

    async def write(self, path: str, data: WriteData, user: str | None = None) -> WriteInfo:
        """Create or overwrite ``path`` (parents created); streams files and iterators."""
        try:
            response = await self._rpc.http.post(
                f"{self._rpc.base_url}/files",
                params=self._params(path, user),
                content=iter_chunks(data),
                headers={**self._rpc.headers, "Content-Type": "application/octet-stream"},
                timeout=httpx.Timeout(60.0, write=None, read=None),
            )
        except httpx.HTTPError as exc:
            raise _errors.from_transport(exc, f"write {path}") from exc
        if response.status_code != 200:
            raise _errors.from_http(response, what=f"write {path}", files=True)
        first = response.json()[0]
        return WriteInfo(name=first["name"], path=first["path"])

    async def write_files(
        self, files: list[WriteEntry], user: str | None = None
    ) -> list[WriteInfo]:
        """Several files in one multipart request."""
        parts = [
            (
                "file",
                (entry.path, entry.data.encode() if isinstance(entry.data, str) else entry.data),
            )
            for entry in files
        ]
        try:
            response = await self._rpc.http.post(
                f"{self._rpc.base_url}/files",
                params={"username": user} if user else None,
                files=parts,
                headers=self._rpc.headers,
                timeout=httpx.Timeout(60.0, write=None, read=None),
            )
        except httpx.HTTPError as exc:
            raise _errors.from_transport(exc, "write_files") from exc
        if response.status_code != 200:
            raise _errors.from_http(response, what="write_files", files=True)
        return [WriteInfo(name=item["name"], path=item["path"]) for item in response.json()]

    async def list(self, path: str, depth: int = 1, user: str | None = None) -> list[EntryInfo]:
        if depth < 1:
            raise SandboxException("depth must be at least 1")
        response = await self._rpc.unary(
            "filesystem.Filesystem/ListDir",
            pb.ListDirRequest(path=path, depth=depth),
            pb.ListDirResponse,
            headers=basic_auth(user),
            files=True,
        )
        return [EntryInfo.from_proto(entry) for entry in response.entries]

    async def get_info(self, path: str, user: str | None = None) -> EntryInfo:
        response = await self._rpc.unary(
            "filesystem.Filesystem/Stat",
            pb.StatRequest(path=path),
            pb.StatResponse,
            headers=basic_auth(user),
            files=True,
        )
        return EntryInfo.from_proto(response.entry)

    async def exists(self, path: str, user: str | None = None) -> bool:
        try:
            await self.get_info(path, user)
        except FileNotFoundException:
            return False
        return True

    async def remove(self, path: str, user: str | None = None) -> None:
        await self._rpc.unary(
            "filesystem.Filesystem/Remove",
            pb.RemoveRequest(path=path),
            pb.RemoveResponse,
            headers=basic_auth(user),
            files=True,
        )

    async def rename(self, old_path: str, new_path: str, user: str | None = None) -> EntryInfo:
        response = await self._rpc.unary(
            "filesystem.Filesystem/Move",
            pb.MoveRequest(source=old_path, destination=new_path),
            pb.MoveResponse,
            headers=basic_auth(user),
            files=True,
        )
        return EntryInfo.from_proto(response.entry)

    async def make_dir(self, path: str, user: str | None = None) -> bool:
        """Create ``path`` and its parents; False if it already was a directory."""
        try:
            await self._rpc.unary(
                "filesystem.Filesystem/MakeDir",
                pb.MakeDirRequest(path=path),
                pb.MakeDirResponse,
                headers=basic_auth(user),
                files=True,
            )
        except SandboxException as exc:
            if "already exists" in str(exc):
                return False
            raise
        return True

    async def watch_dir(
        self,
        path: str,
        on_event: Callable[[FilesystemEvent], object] | None = None,
        recursive: bool = False,
        user: str | None = None,
    ) -> AsyncWatchHandle:
        """Watch a directory; the first event proves the watch is in place before returning."""
        events = self._rpc.server_stream(
            "filesystem.Filesystem/WatchDir",
            pb.WatchDirRequest(path=path, recursive=recursive),
            pb.WatchDirResponse,
            # a pushed watch wakes each second so that stop() is honoured promptly
            headers={**basic_auth(user), "Keepalive-Ping-Interval": "1" if on_event else "50"},
            timeout=None,
            files=True,
        )
        first = await events.__anext__()
        if first.WhichOneof("event") != "start":
            raise SandboxException("envd did not confirm the watch")
        return AsyncWatchHandle(events, on_event)
