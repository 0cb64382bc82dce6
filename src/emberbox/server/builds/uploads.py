"""Files uploaded for a template's COPY steps, addressed by the SDK's content hash.

``GET /templates/{id}/files/{hash}`` answers whether a file is present and, if not, where to
``PUT`` it: a URL on this API carrying a token signed with a key kept in the data dir, bound to
the template and the hash and good for ``ttl_s``. Archives are stored as plain tar (a gzipped
upload is unpacked as it arrives) under ``<data_dir>/template-files/<templateID>/<hash>.tar``;
they are only ever unpacked inside a build sandbox. A remote node is sent the ones a build
needs (``runner.BuildRunner``); an embedded node reads them here (the same layout).

Each archive has a size limit, and all of one team's archives a quota (:class:`TeamShare`):
counted as the bytes arrive, with what the team's other uploads are writing meanwhile, and
again, exactly, just before the archive appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...host.files import write_atomic
from ...node.builds import FILES_DIR, BuildFiles, BuildRefused
from ...vocabulary import whole_number
from ..lifecycle.errors import Invalid, NotFound, QuotaExceeded

BAD = "bad_token"
UPLOAD_PREFIX = "/_uploads/templates/"  # served outside API-key auth: the token is the check
_KEY_BYTES = 32  # the upload URLs' HMAC key
_PART = ".part"  # an archive while it arrives: ``.<hash>.<random>.part`` beside its target


class UploadRefused(Invalid):
    """Bad token, bad archive or too large; nothing was kept."""


@dataclass(frozen=True)
class TeamShare:
    """The team an upload is for: its templates (whose archives count) and its quota."""

    team_id: str
    template_ids: Sequence[str]
    quota: int


class Uploads:
    def __init__(self, root: Path, key: bytes, ttl_s: float = 3600.0, max_bytes: int = 4 << 30):
        self.files = BuildFiles(root)  # the node's layout, so an embedded node reads them here
        self.key = key
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._writing: Counter[str] = Counter()  # per team: bytes its uploads have written

    @classmethod
    def open(cls, data_dir: Path, max_bytes: int) -> Uploads:
        """The signing key is made once (0600) and kept, so URLs survive a restart. Uploads a
        previous server process was receiving when it died are removed (one server per data
        dir: none of this one's has begun)."""
        key_file = data_dir / "secrets" / "upload-url.key"
        key = key_file.read_bytes() if key_file.exists() else b""
        if len(key) != _KEY_BYTES:  # none yet (or an older server's make cut off: empty)
            key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = secrets.token_bytes(_KEY_BYTES)
            write_atomic(key_file, key, private=True)
        uploads = cls(data_dir / FILES_DIR, key, max_bytes=max_bytes)
        for cut in uploads.files.root.glob(f"*/.*{_PART}"):
            cut.unlink(missing_ok=True)
        return uploads

    def path(self, template_id: str, files_hash: str) -> Path:
        try:
            return self.files.path(template_id, files_hash)
        except BuildRefused as exc:
            raise Invalid(str(exc)) from None

    def present(self, template_id: str, files_hash: str) -> bool:
        return self.path(template_id, files_hash).is_file()

    def _signature(self, template_id: str, files_hash: str, expires: int) -> str:
        msg = f"{template_id}/{files_hash}/{expires}".encode()
        return hmac.new(self.key, msg, hashlib.sha256).hexdigest()

    def upload_path(self, template_id: str, files_hash: str) -> str:
        """Path and query of a fresh upload URL (the caller prefixes its own base URL)."""
        expires = int(time.time() + self.ttl_s)
        sig = self._signature(template_id, files_hash, expires)
        return f"{UPLOAD_PREFIX}{template_id}/{files_hash}?expires={expires}&signature={sig}"

    def check_token(self, template_id: str, files_hash: str, expires: str, sig: str) -> None:
        at = whole_number(expires)
        if at is None or at < time.time():
            raise UploadRefused(
                "the upload URL has expired; ask for a new one", error_code="bad_token"
            )
        good = self._signature(template_id, files_hash, at)
        if not hmac.compare_digest(good, sig):
            raise UploadRefused("the upload URL's signature is not valid", error_code=BAD)

    def stored_bytes(self, template_ids: Sequence[str]) -> int:
        """What the whole archives of these templates take (uploads under way not counted)."""
        total = 0
        for template_id in template_ids:
            try:
                entries = list(os.scandir(self.files.context_dir(template_id)))
            except (FileNotFoundError, BuildRefused):
                continue
            for entry in entries:
                if entry.name.endswith(".tar") and not entry.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):  # a template deleted meanwhile
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    async def receive(
        self,
        template_id: str,
        files_hash: str,
        chunks: AsyncIterator[bytes],
        team: TeamShare | None = None,
    ) -> None:
        """Store one archive; it appears (by rename) only once complete, readable as tar, and
        within ``team``'s quota (if given, and not 0). An archive it replaces counts once."""
        target = self.path(template_id, files_hash)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{files_hash}.{secrets.token_hex(4)}{_PART}"
        share = team if team is not None and team.quota else None
        try:
            with self._arriving(share, target) as arrived:  # counted until it is stored, or refused
                await self._write(tmp, chunks, arrived)
                await asyncio.to_thread(_check_tar, tmp)
                if share:  # again, exactly: no await from here to the rename
                    _check_share(share, self._stored_but(target, share) + tmp.stat().st_size)
                os.replace(tmp, target)
        except FileNotFoundError:  # its directory went with the template meanwhile
            raise NotFound(f"template '{template_id}' was deleted during the upload") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _stored_but(self, target: Path, share: TeamShare) -> int:
        """The team's stored archives but the one an upload would replace."""
        try:
            replaced = target.stat().st_size
        except FileNotFoundError:
            replaced = 0
        return self.stored_bytes(share.template_ids) - replaced

    @contextlib.contextmanager
    def _arriving(self, share: TeamShare | None, target: Path) -> Iterator[Callable[[int], None]]:
        """Counts the bytes one upload to ``target`` writes in its team's share, with what
        the team has stored when it starts (but ``target``, which it replaces) and what its
        other uploads are writing; refuses the upload once they pass the quota."""
        if share is None:
            yield lambda _n: None
            return
        stored, mine = self._stored_but(target, share), 0

        def arrived(n: int) -> None:
            nonlocal mine
            self._writing[share.team_id] += n
            mine += n
            _check_share(share, stored + self._writing[share.team_id])

        try:
            yield arrived
        finally:
            self._writing[share.team_id] -= mine
            if self._writing[share.team_id] <= 0:
                del self._writing[share.team_id]

    async def _write(
        self, tmp: Path, chunks: AsyncIterator[bytes], arrived: Callable[[int], None]
    ) -> None:
        inflate: zlib._Decompress | None = None
        seen = written = 0
        with tmp.open("wb") as out:
            async for chunk in chunks:
                if not chunk:
                    continue
                if seen == 0 and chunk[:2] == b"\x1f\x8b":
                    inflate = zlib.decompressobj(wbits=31)
                seen += len(chunk)
                for data in _inflated(inflate, chunk) if inflate else (chunk,):
                    written += len(data)
                    if written > self.max_bytes:
                        raise QuotaExceeded(f"the archive is larger than {self.max_bytes} bytes")
                    arrived(len(data))
                    out.write(data)
            if inflate is not None:
                if not inflate.eof:
                    raise UploadRefused("the gzip stream ended early")
                out.write(inflate.flush())
        if seen == 0:
            raise UploadRefused("the upload is empty")

    def drop_template(self, template_id: str) -> None:
        self.files.drop(template_id)


def _check_share(team: TeamShare, total: int) -> None:
    if total > team.quota:
        raise QuotaExceeded(
            f"the team's template files would take more than {team.quota} bytes "
            "(EMBERBOX_MAX_TEMPLATE_FILES_BYTES_PER_TEAM); delete templates it no longer needs"
        )


def _inflated(inflate: zlib._Decompress, chunk: bytes) -> Iterator[bytes]:
    """What ``chunk`` inflates to, a MiB at a time (a few KiB of a gzip bomb inflate to GiBs:
    counted against the limit as they come, never held whole); a corrupt stream is refused."""
    try:
        while chunk:
            yield inflate.decompress(chunk, 1 << 20)
            chunk = inflate.unconsumed_tail
    except zlib.error as exc:
        raise UploadRefused(f"the gzip stream is corrupt: {exc}") from None


def _check_tar(path: Path) -> None:
    try:
        with tarfile.open(path, "r:") as tar:
            for _ in tar:
                pass
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise UploadRefused(f"the upload is not a tar archive: {exc}") from None
