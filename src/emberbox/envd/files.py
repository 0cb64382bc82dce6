"""``GET /files`` (download) and ``POST /files`` (multipart or raw upload), streamed both ways.

Uploads are parsed as they arrive and written straight into the destination, so a 1 GiB upload
never sits in memory or in a temporary copy. A file written in place (not renamed into place)
keeps inotify semantics the SDK tests expect: a WRITE event on the file's own name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from .._connect.errors import ConnectError
from .filesystem.entries import METADATA_XATTR_PREFIX
from .http_errors import UNAUTHORIZED_MESSAGE, HTTPProblem
from .signing import verify
from .state import EnvdState
from .users import User, chown_new, make_dirs, resolve_path, resolve_user

METADATA_HEADER = "x-metadata-"
METADATA_KEY_MAX = 246
METADATA_TOTAL_MAX = 4096


class _BigChunkFileResponse(FileResponse):
    chunk_size = 1024 * 1024  # fewer thread hops per byte than Starlette's 64 KiB default


def authorize(state: EnvdState, request: Request, operation: str) -> None:
    """A valid ``X-Access-Token`` or a valid ``v1_`` signature, when a token is configured."""
    token = state.access_token
    if not token:
        return
    presented = request.headers.get("x-access-token")
    if presented is not None and state.token_ok(presented):
        return
    signature = request.query_params.get("signature")
    if not signature:
        raise HTTPProblem(401, UNAUTHORIZED_MESSAGE)
    reason = verify(
        signature,
        request.query_params.get("path", ""),
        operation,
        request.query_params.get("username", ""),
        token,
        request.query_params.get("signature_expiration"),
    )
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
    authorize(state, request, "read")
    user = _user(state, request)
    raw = request.query_params.get("path")
    if not raw:
        raise HTTPProblem(400, "query parameter 'path' is required")
    path = _path(raw, user)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise HTTPProblem(404, f"path '{path}' does not exist") from None
    except OSError as exc:
        raise HTTPProblem(400, f"cannot read '{path}': {exc.strerror}") from None
    if os.path.isdir(path):
        raise HTTPProblem(400, f"path '{path}' is a directory")
    if not os.access(path, os.R_OK):
        raise HTTPProblem(403, f"permission denied: '{path}'")
    return _BigChunkFileResponse(
        path,
        stat_result=st,
        filename=os.path.basename(path),
        content_disposition_type="inline",
        media_type="application/octet-stream",
    )


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

    def open(self, path: str) -> None:
        if path in self.written:
            raise HTTPProblem(400, f"path '{path}' appears twice in one upload")
        if os.path.isdir(path):
            raise HTTPProblem(400, f"path '{path}' is a directory")
        try:
            make_dirs(os.path.dirname(path), self.user)
            created = not os.path.lexists(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _io_problem(exc, path) from None
        if created:
            self.created.append(path)
        chown_new(path, self.user) if created else _chown_existing(path, self.user)
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
        os.close(self.current.fd)
        path = self.current.path
        self.current = None
        _replace_metadata(path, self.metadata)
        self.written.append(path)

    def abort(self) -> None:
        if self.current is not None:
            with contextlib.suppress(OSError):
                os.close(self.current.fd)
            self.current = None
        for path in self.created:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def result(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path in self.written:
            item: dict[str, Any] = {"path": path, "name": os.path.basename(path), "type": "file"}
            if self.metadata:
                item["metadata"] = self.metadata
            out.append(item)
        return out


def _chown_existing(path: str, user: User) -> None:
    with contextlib.suppress(OSError):
        chown_new(path, user)


def _replace_metadata(path: str, metadata: dict[str, str] | None) -> None:
    with contextlib.suppress(OSError):
        for name in os.listxattr(path):
            if name.startswith(METADATA_XATTR_PREFIX):
                os.removexattr(path, name)
    if not metadata:
        return
    try:
        for key, value in metadata.items():
            os.setxattr(path, METADATA_XATTR_PREFIX + key, value.encode())
    except OSError as exc:
        raise HTTPProblem(400, f"cannot store metadata on '{path}': {exc.strerror}") from None


def _io_problem(exc: OSError, path: str) -> HTTPProblem:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HTTPProblem(507, f"not enough disk space to write '{path}'")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HTTPProblem(403, f"cannot write '{path}': {exc.strerror}")
    if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG):
        return HTTPProblem(400, f"cannot write '{path}': {exc.strerror}")
    return HTTPProblem(500, f"cannot write '{path}': {exc.strerror}")


async def upload(state: EnvdState, request: Request) -> Response:
    authorize(state, request, "write")
    user = _user(state, request)
    query_path = request.query_params.get("path")
    length = request.headers.get("content-length")
    limit = state.max_upload_bytes
    if limit is not None and length and length.isdigit() and int(length) > limit:
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
        upload.abort()
        raise
    if not upload.written:
        raise HTTPProblem(400, "the upload carried no file (form field 'file')")
    return JSONResponse(upload.result())


async def _receive_raw(request: Request, upload: _Upload, query_path: str | None) -> None:
    if not query_path:
        raise HTTPProblem(400, "query parameter 'path' is required for octet-stream uploads")
    encoding = request.headers.get("content-encoding", "identity").lower()
    decode: Callable[[bytes], bytes] | None = None
    if encoding == "gzip":
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        decode = decoder.decompress
    elif encoding != "identity":
        raise HTTPProblem(400, f"unsupported Content-Encoding '{encoding}'")
    upload.open(_path(query_path, upload.user))
    try:
        async for chunk in request.stream():
            upload.write(decode(chunk) if decode else chunk)
    except zlib.error as exc:
        raise HTTPProblem(400, f"body is not valid gzip: {exc}") from None


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
        upload.open(_path(target, upload.user))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if active:
            upload.write(memoryview(data)[start:end])

    def on_part_end() -> None:
        nonlocal active
        if active:
            upload.close_current()
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
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except HTTPProblem:
        raise
    except Exception as exc:  # the parser's own errors: a malformed body
        raise HTTPProblem(400, f"malformed multipart body: {exc}") from None
