"""gzip-encoded uploads (``Content-Encoding: gzip``, what the SDKs' ``gzip=True`` sends) to a
real envd on loopback: every member of the body is written, a body cut short inside a member
is refused and leaves no file, and a small body that inflates past the upload limit is refused
as it inflates."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import EnvdProcess

_GZIP = {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}


def _upload(envd: EnvdProcess, path: Path, body: bytes) -> httpx.Response:
    return httpx.post(f"{envd.url}/files", params={"path": str(path)}, content=body, headers=_GZIP)


def _peak_rss(envd: EnvdProcess) -> int:
    """The envd process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{envd.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_every_member_of_a_gzip_body_is_written(
    envd_factory: Callable[..., EnvdProcess], user_dir: Path
) -> None:
    """``cat a.gz b.gz`` is one valid gzip stream (RFC 1952 §2.2); its second member was
    dropped, and the upload answered 200."""
    first, second = os.urandom(3 * 2**20), b"\0" * (5 * 2**20)
    envd = envd_factory()
    answer = _upload(envd, user_dir / "two.bin", gzip.compress(first) + gzip.compress(second))
    assert answer.status_code == 200, answer.text
    assert (user_dir / "two.bin").read_bytes() == first + second


def test_a_gzip_body_cut_short_is_refused_and_leaves_no_file(
    envd_factory: Callable[..., EnvdProcess], user_dir: Path
) -> None:
    whole = gzip.compress(os.urandom(200_000))
    envd = envd_factory()
    for cut in (whole[:-4], whole[: len(whole) // 2]):  # (its trailer, half its data)
        answer = _upload(envd, user_dir / "cut.bin", cut)
        assert answer.status_code == 400, answer.text
        assert "gzip" in answer.json()["message"]
        assert not (user_dir / "cut.bin").exists()
    trailing = _upload(envd, user_dir / "cut.bin", whole + b"not gzip")
    assert trailing.status_code == 400 and not (user_dir / "cut.bin").exists()


def test_a_small_body_that_inflates_past_the_limit_is_refused(
    envd_factory: Callable[..., EnvdProcess], user_dir: Path
) -> None:
    """256 MiB of zeros in ~250 KiB: refused at the 8 MiB limit as it inflates, never held
    whole (it was inflated a chunk of the body at a time, up to ~1000x its size, before the
    limit was looked at): envd's peak memory barely moves."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * 2**20
    bomb = b"".join(deflate.compress(block) for _ in range(256)) + deflate.flush()
    assert len(bomb) < 300_000
    envd = envd_factory("--max-upload-mb", "8")
    peak = _peak_rss(envd)
    answer = _upload(envd, user_dir / "bomb.bin", bomb)
    assert answer.status_code == 413, answer.text
    assert _peak_rss(envd) - peak < 48 * 2**20
    assert not (user_dir / "bomb.bin").exists()
    assert httpx.get(f"{envd.url}/health").status_code == 204
