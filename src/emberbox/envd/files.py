"""``GET /files`` (download) and ``POST /files`` (multipart or raw upload), streamed both ways.

Uploads are parsed as they arrive and written straight into the destination, so a 1 GiB upload
never sits in memory or in a temporary copy. A file written in place (not renamed into place)
keeps inotify semantics the SDK tests expect: a WRITE event on the file's own name.

Every path is opened under the requesting user's credentials (:mod:`.creds`), so the kernel
applies that user's permissions and what the user creates is the user's; the bytes then flow
through the open descriptor, and the path is never opened again as root (a symlink swapped in
meanwhile cannot redirect the transfer).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

import anyio.to_thread
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .._connect.errors import ConnectError
from ..signed_urls import refusal
from ..vocabulary import ENVD_TOKEN_HEADER, whole_number
from .creds import acquire_as_user, as_user
from .filesystem.entries import METADATA_XATTR_PREFIX
from .http_errors import HTTPProblem, problem_response
from .state import EnvdState
from .users import User, make_dirs, resolve_path, resolve_user

METADATA_HEADER = "x-metadata-"
METADATA_KEY_MAX = 246
METADATA_TOTAL_MAX = 4096


CHUNK = 1024 * 1024  # fewer thread hops per byte than Starlette's 64 KiB default

# Filesystems whose files report a made-up size (0 in procfs, 4096 in sysfs): their content is
# streamed without a Content-Length, never cut to (or padded past) what stat says.
_PSEUDO_FS_MAGIC = frozenset(
    {
        0x9FA0,  # proc
        0x62656572,  # sysfs
        0x27E0EB,  # cgroup
        0x63677270,  # cgroup2
        0x64626720,  # debugfs
        0x74726163,  # tracefs
        0x73636673,  # securityfs
        0x62656570,  # configfs
        0xCAFE4A11,  # bpf
        0x6165676C,  # pstore
        0xDE5E81E4,  # efivarfs
    }
)
_libc = ctypes.CDLL(None, use_errno=True)


def authorize(state: EnvdState, request: Request) -> None:
    """A valid ``X-Access-Token`` or a valid ``v1_`` signature, when a token is configured."""
    token = state.access_token
    if not token:
        return
    presented = request.headers.get(ENVD_TOKEN_HEADER)
    reason = refusal(token, presented, request.method, request.query_params)
    if reason is not None:
        raise HTTPProblem(401, reason)


def _user(state: EnvdState, request: Request) -> User:
    try:
        return resolve_user(state, request.query_params.get("username") or None)
    except ConnectError as err:
        raise HTTPProblem(401, err.message) from None


def _path(raw: str, user: User) -> str:
    try:
        return resolve_path(raw, user)
    except ConnectError as err:
        raise HTTPProblem(400, err.message) from None


async def download(state: EnvdState, request: Request) -> Response:
    authorize(state, request)
    user = _user(state, request)
    raw = request.query_params.get("path")
    if not raw:
        raise HTTPProblem(400, "query parameter 'path' is required")
    path = _path(raw, user)
    whole_if_small = request.method == "GET" and "range" not in request.headers
    fd, st, whole = await acquire_as_user(
        user, _close_first, _open_for_reading, path, whole_if_small
    )
    try:
        return _file_response(request, fd, st, path, whole)
    except BaseException:
        os.close(fd)
        raise


def _close_first(opened: tuple[int, os.stat_result, bytes | None]) -> None:
    os.close(opened[0])


def _open_for_reading(
    path: str, whole_if_small: bool = False
) -> tuple[int, os.stat_result, bytes | None]:
    """Open as the user (run under its credentials); what the descriptor is decides the rest.

    With ``whole_if_small``, a file that stat says is under ``CHUNK`` is read here too, in
    one ``pread``: the answer is the file as it was at one instant, whatever its size says.
    A status file rewritten in place (``echo n > f`` truncates, then writes) would otherwise
    often shrink between the stat that set Content-Length and the read, and the transfer
    would end short (a broken connection for the client). It also saves a thread hop."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HTTPProblem(404, f"path '{path}' does not exist") from None
    except OSError as exc:
        raise _read_problem(exc, path) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise HTTPProblem(400, f"path '{path}' is a directory")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise HTTPProblem(400, f"path '{path}' is not a file")  # FIFOs would block forever
        os.set_blocking(fd, True)  # O_NONBLOCK only kept open() of a FIFO from hanging
        small = whole_if_small and st.st_size < CHUNK and _has_true_size(fd, st)
        whole = os.pread(fd, CHUNK, 0) if small else None
    except OSError as exc:
        os.close(fd)
        raise _read_problem(exc, path) from None
    except BaseException:
        os.close(fd)
        raise
    return fd, st, whole


def _read_problem(exc: OSError, path: str) -> HTTPProblem:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return HTTPProblem(403, f"permission denied: '{path}'")
    if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.ENXIO):
        return HTTPProblem(400, f"cannot read '{path}': {exc.strerror}")
    return HTTPProblem(500, f"cannot read '{path}': {exc.strerror}")


def _fs_magic(fd: int) -> int | None:
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes; f_type comes first
    if _libc.fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _has_true_size(fd: int, st: os.stat_result) -> bool:
    """Whether ``st_size`` is what a read returns (not so in /proc, /sys, or for devices)."""
    return stat.S_ISREG(st.st_mode) and st.st_size > 0 and _fs_magic(fd) not in _PSEUDO_FS_MAGIC


class _Unsatisfiable(Exception):
    pass


def _requested_range(headers: Headers, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as ``[start, end)``, or None to send the whole file.

    Several ranges, unparsable ones and ``If-Range`` get the whole file: a server may always
    ignore ``Range`` (RFC 9110 14.2), and no SDK asks for more than one.
    """
    value = headers.get("range")
    if value is None or headers.get("if-range") is not None:
        return None
    units, _, spec = value.partition("=")
    first, dash, last = spec.strip().partition("-")
    if units.strip().lower() != "bytes" or "," in spec or not dash:
        return None
    start, stop = whole_number(first), whole_number(last)
    if (start is None and first) or (stop is None and last):
        return None
    if start is None:
        if not stop:
            raise _Unsatisfiable
        return max(size - stop, 0), size
    end = min(stop + 1, size) if stop is not None else size
    if start >= size:
        raise _Unsatisfiable
    return (start, end) if end > start else None


def _file_response(
    request: Request, fd: int, st: os.stat_result, path: str, whole: bytes | None = None
) -> Response:
    """``whole``: the file's content read at open, if it was smaller than ``CHUNK`` then; a
    read that came back full (the file grew meanwhile) is streamed as any other."""
    name = os.path.basename(path)
    quoted = quote(name)
    headers = {
        "content-disposition": f"inline; filename*=utf-8''{quoted}"
        if quoted != name
        else f'inline; filename="{name}"',
        "last-modified": formatdate(st.st_mtime, usegmt=True),
    }
    head = request.method == "HEAD"
    if whole is not None and len(whole) < CHUNK:
        os.close(fd)
        headers["accept-ranges"] = "bytes"
        return Response(whole, 200, headers, media_type="application/octet-stream")
    if not _has_true_size(fd, st):
        return _DescriptorResponse(fd, headers, head=head)
    headers["accept-ranges"] = "bytes"
    try:
        span = _requested_range(request.headers, st.st_size)
    except _Unsatisfiable:
        os.close(fd)
        response = problem_response(416, f"range not satisfiable for {st.st_size} bytes")
        response.headers["content-range"] = f"bytes */{st.st_size}"
        return response
    if span is None:
        headers["content-length"] = str(st.st_size)
        return _DescriptorResponse(fd, headers, head=head, span=(0, st.st_size))
    start, end = span
    headers["content-range"] = f"bytes {start}-{end - 1}/{st.st_size}"
    headers["content-length"] = str(end - start)
    return _DescriptorResponse(fd, headers, status=206, head=head, span=span)


class _DescriptorResponse(StreamingResponse):
    """Streams an already open descriptor, then closes it.

    With a ``span`` it sends exactly the announced bytes with ``pread`` (a file growing meanwhile
    cannot overrun Content-Length; one shrinking ends the response short, which the client sees
    as a broken transfer, as it should). Without one, it reads to EOF with no length at all.
    """

    def __init__(
        self,
        fd: int,
        headers: dict[str, str],
        *,
        status: int = 200,
        head: bool = False,
        span: tuple[int, int] | None = None,
    ) -> None:
        self.fd = fd
        body = _nothing() if head else _span(fd, *span) if span else _to_eof(fd)
        super().__init__(body, status, headers, media_type="application/octet-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            os.close(self.fd)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


async def _span(fd: int, start: int, end: int) -> AsyncIterator[bytes]:
    while start < end:
        chunk = await anyio.to_thread.run_sync(os.pread, fd, min(CHUNK, end - start), start)
        if not chunk:
            return
        start += len(chunk)
        yield chunk


async def _to_eof(fd: int) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(os.read, fd, CHUNK):
        yield chunk


def parse_metadata(request: Request) -> dict[str, str] | None:
    """``X-Metadata-<key>: <value>`` headers → xattrs; None when the request carries none."""
    metadata: dict[str, str] = {}
    total = 0
    for name, value in request.headers.items():
        if not name.startswith(METADATA_HEADER):
            continue
        key = name[len(METADATA_HEADER) :].lower()
        if not key or len(key.encode()) > METADATA_KEY_MAX:
            raise HTTPProblem(400, f"metadata key '{key}' is empty or longer than 246 bytes")
        if not all(32 <= ord(c) < 127 for c in key + value):
            raise HTTPProblem(400, f"metadata '{key}' must be printable ASCII")
        total += len(key) + len(value)
        metadata[key] = value
    if total > METADATA_TOTAL_MAX:
        raise HTTPProblem(400, f"metadata is {total} bytes; at most 4096 are allowed")
    return metadata or None


@dataclass
class _Destination:
    path: str
    fd: int
    created: bool


def _close_fd_first(opened: tuple[int, bool]) -> None:
    os.close(opened[0])


def _open_for_writing(path: str) -> tuple[int, bool]:
    """Create parents and open ``path`` as the user (run under its credentials): the kernel
    decides whether it may, and what it creates is owned by it. Returns (fd, created)."""
    if os.path.isdir(path):
        raise HTTPProblem(400, f"path '{path}' is a directory")
    try:
        make_dirs(os.path.dirname(path))
        created = not os.path.lexists(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _io_problem(exc, path) from None
    return fd, created


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


@dataclass
class _Upload:
    """Writes incoming files one after another; undoes files it created if the upload fails."""

    user: User
    max_bytes: int | None
    metadata: dict[str, str] | None
    written: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    current: _Destination | None = None
    received: int = 0

    async def open(self, path: str) -> None:
        if path in self.written:
            raise HTTPProblem(400, f"path '{path}' appears twice in one upload")
        fd, created = await acquire_as_user(self.user, _close_fd_first, _open_for_writing, path)
        if created:
            self.created.append(path)
        self.current = _Destination(path, fd, created)

    def write(self, data: bytes | memoryview) -> None:
        assert self.current is not None
        self.received += len(data)
        if self.max_bytes is not None and self.received > self.max_bytes:
            raise HTTPProblem(413, f"upload exceeds the {self.max_bytes} byte limit")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.current.fd, view) :]
        except OSError as exc:
            raise _io_problem(exc, self.current.path) from None

    def close_current(self) -> None:
        if self.current is None:
            return
        current, self.current = self.current, None
        try:
            _replace_metadata(current.fd, current.path, self.metadata)
        finally:
            os.close(current.fd)
        self.written.append(current.path)

    async def abort(self) -> None:
        if self.current is not None:
            with contextlib.suppress(OSError):
                os.close(self.current.fd)
            self.current = None
        if self.created:
            await as_user(self.user, _unlink_all, self.created)

    def result(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path in self.written:
            item: dict[str, Any] = {"path": path, "name": os.path.basename(path), "type": "file"}
            if self.metadata:
                item["metadata"] = self.metadata
            out.append(item)
        return out


def _replace_metadata(fd: int, path: str, metadata: dict[str, str] | None) -> None:
    """Through the descriptor the user opened for writing, so no path is looked up as root."""
    with contextlib.suppress(OSError):
        for name in os.listxattr(fd):
            if name.startswith(METADATA_XATTR_PREFIX):
                os.removexattr(fd, name)
    if not metadata:
        return
    try:
        for key, value in metadata.items():
            os.setxattr(fd, METADATA_XATTR_PREFIX + key, value.encode())
    except OSError as exc:
        raise HTTPProblem(400, f"cannot store metadata on '{path}': {exc.strerror}") from None


def _io_problem(exc: OSError, path: str) -> HTTPProblem:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HTTPProblem(507, f"not enough disk space to write '{path}'")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return HTTPProblem(403, f"permission denied: '{path}'")
    if exc.errno == errno.EROFS:
        return HTTPProblem(403, f"cannot write '{path}': {exc.strerror}")
    if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG):
        return HTTPProblem(400, f"cannot write '{path}': {exc.strerror}")
    return HTTPProblem(500, f"cannot write '{path}': {exc.strerror}")


async def upload(state: EnvdState, request: Request) -> Response:
    authorize(state, request)
    user = _user(state, request)
    query_path = request.query_params.get("path")
    length = request.headers.get("content-length")
    limit = state.max_upload_bytes
    declared = whole_number(length or "")
    if limit is not None and declared is not None and declared > limit:
        raise HTTPProblem(413, f"upload exceeds the {state.max_upload_bytes} byte limit")
    upload = _Upload(user, state.max_upload_bytes, parse_metadata(request))
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            await _receive_multipart(request, upload, query_path, content_type)
        else:
            await _receive_raw(request, upload, query_path)
        upload.close_current()
    except BaseException:
        await upload.abort()
        raise
    if not upload.written:
        raise HTTPProblem(400, "the upload carried no file (form field 'file')")
    return JSONResponse(upload.result())


async def _receive_raw(request: Request, upload: _Upload, query_path: str | None) -> None:
    if not query_path:
        raise HTTPProblem(400, "query parameter 'path' is required for octet-stream uploads")
    encoding = request.headers.get("content-encoding", "identity").lower()
    gunzip: Gunzip | None = None
    if encoding == "gzip":
        gunzip = Gunzip()
    elif encoding != "identity":
        raise HTTPProblem(400, f"unsupported Content-Encoding '{encoding}'")
    await upload.open(_path(query_path, upload.user))
    try:
        async for chunk in request.stream():
            if gunzip is None:
                upload.write(chunk)
                continue
            for data in gunzip.feed(chunk):
                upload.write(data)
        if gunzip is not None:
            gunzip.finish()
    except zlib.error as exc:
        raise HTTPProblem(400, f"body is not valid gzip: {exc}") from None


class Gunzip:
    """A gzip body's bytes, ``CHUNK`` at most at a time (a small body can stand for gigabytes,
    and the upload's limit is checked as each piece is written), every member of it (``cat
    a.gz b.gz`` is one valid gzip), and ``zlib.error`` for one cut short."""

    def __init__(self) -> None:
        self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._started = False  # the current member has had input

    def feed(self, data: bytes) -> Iterator[bytes]:
        while True:
            self._started = self._started or bool(data)
            out = self._member.decompress(data, CHUNK)
            if out:
                yield out
            if self._member.eof:  # the next member (or trailing bytes, which it refuses)
                data = self._member.unused_data
                self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._started = False
                if not data:
                    return
                continue
            data = self._member.unconsumed_tail
            if not data and len(out) < CHUNK:  # (a full CHUNK: more may be held back)
                return

    def finish(self) -> None:
        if self._started and not self._member.eof:
            raise zlib.error("the body ends inside a gzip member (truncated)")


async def _receive_multipart(
    request: Request, upload: _Upload, query_path: str | None, content_type: str
) -> None:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPProblem(400, "multipart body without a boundary")
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    active = False  # inside a part named "file"
    files_seen = 0
    # The parser's callbacks are synchronous, but opening a file means a trip to a credentialed
    # worker; so callbacks queue what to do (a path to open, bytes to write, None: part ended)
    # and the queue is applied, in order, after each chunk.
    pending: list[str | memoryview | None] = []

    async def apply() -> None:
        for op in pending:
            if isinstance(op, str):
                await upload.open(op)
            elif op is None:
                upload.close_current()
            else:
                upload.write(op)
        pending.clear()

    def on_part_begin() -> None:
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal active, files_seen
        _, params = parse_options_header(headers.get(b"content-disposition", b""))
        active = params.get(b"name") == b"file"
        if not active:
            return
        files_seen += 1
        filename = params.get(b"filename", b"").decode(errors="replace")
        if query_path:
            if files_seen > 1:
                raise HTTPProblem(400, "'path' names one file; send several without it")
            target = query_path
        elif filename:
            target = filename
        else:
            raise HTTPProblem(400, "a file part has no filename and the request has no 'path'")
        pending.append(_path(target, upload.user))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if active:
            pending.append(memoryview(data)[start:end])

    def on_part_end() -> None:
        nonlocal active
        if active:
            pending.append(None)
        active = False

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
        max_header_count=32,
    )
    async for chunk in request.stream():
        _feed(parser.write, chunk)
        await apply()
    _feed(parser.finalize)
    await apply()


def _feed(step: Callable[..., object], *args: bytes) -> None:
    try:
        step(*args)
    except HTTPProblem:
        raise
    except Exception as exc:  # the parser's own errors: a malformed body
        raise HTTPProblem(400, f"malformed multipart body: {exc}") from None
