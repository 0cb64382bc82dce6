"""``GET /files`` sends what a read returns: procfs/sysfs sizes are made up, ranges are exact."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import EnvdProcess


def test_proc_files_download_whole(sandbox: Any) -> None:
    """procfs says size 0; the SDK must still get the content (it used to get nothing)."""
    assert os.stat("/proc/version").st_size == 0
    assert sandbox.files.read("/proc/version") == Path("/proc/version").read_text()
    status = sandbox.files.read("/proc/self/status")
    assert status.startswith("Name:") and "\nUid:" in status
    cpuinfo = sandbox.files.read("/proc/cpuinfo", format="bytes")
    assert cpuinfo.startswith(b"processor") and len(cpuinfo) > 100
    streamed = b"".join(sandbox.files.read("/proc/version", format="stream"))
    assert streamed == Path("/proc/version").read_bytes()


def test_sysfs_files_download_whole(sandbox: Any) -> None:
    """sysfs says size 4096 whatever the content: neither padded nor cut to it."""
    candidates = ["/sys/kernel/mm/transparent_hugepage/enabled", "/sys/class/net/lo/mtu"]
    path = next((p for p in candidates if os.access(p, os.R_OK)), None)
    if path is None:
        pytest.skip("no readable sysfs file on this host")
    assert os.stat(path).st_size == 4096
    assert sandbox.files.read(path) == Path(path).read_text()


def test_unsized_download_keeps_the_connection_usable(envd_debug: EnvdProcess) -> None:
    """Content-Length 0 with a body broke the connection; the next request then failed."""
    with httpx.Client(base_url=envd_debug.url) as client:
        for _ in range(3):
            proc = client.get("/files", params={"path": "/proc/version", "username": "root"})
            assert proc.status_code == 200
            assert proc.content == Path("/proc/version").read_bytes()
            assert proc.headers.get("content-length") in (None, str(len(proc.content)))
            assert 'filename="version"' in proc.headers["content-disposition"]
            hosts = client.get("/files", params={"path": "/etc/hostname"})
            assert hosts.content == Path("/etc/hostname").read_bytes()
            assert hosts.headers["content-length"] == str(len(hosts.content))


def test_ranges(envd_debug: EnvdProcess, user_dir: Path) -> None:
    target = user_dir / "digits.txt"
    target.write_bytes(b"0123456789")
    url = f"{envd_debug.url}/files"

    def get(**headers: str) -> httpx.Response:
        return httpx.get(url, params={"path": str(target)}, headers=headers)

    for spec, body in (("bytes=2-5", b"2345"), ("bytes=7-", b"789"), ("bytes=-3", b"789")):
        response = get(Range=spec)
        assert (response.status_code, response.content) == (206, body), spec
        start = 10 - len(body) if spec != "bytes=2-5" else 2
        assert response.headers["content-range"] == f"bytes {start}-{start + len(body) - 1}/10"
    clipped = get(Range="bytes=8-100")
    assert (clipped.status_code, clipped.content) == (206, b"89")
    beyond = get(Range="bytes=10-20")
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == "bytes */10"
    for ignored in (
        {"Range": "bytes=0-1,4-5"},
        {"Range": "rows=1-2"},
        {"Range": "bytes=5-2"},
        {"Range": "bytes=\u00b2-5"},  # a digit to str.isdigit, not to int (was a 500)
    ):
        raw = {k.encode(): v.encode("latin-1") for k, v in ignored.items()}
        whole = httpx.get(url, params={"path": str(target)}, headers=raw)
        assert (whole.status_code, whole.content) == (200, b"0123456789"), ignored
    conditional = get(Range="bytes=0-1", **{"If-Range": '"stale"'})
    assert (conditional.status_code, conditional.content) == (200, b"0123456789")
    head = httpx.head(url, params={"path": str(target)})
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "10", b"")


def test_files_that_are_not_files(envd_debug: EnvdProcess, user_dir: Path) -> None:
    """A FIFO would block a reader forever; it is refused, not waited on. Devices stream."""
    fifo = user_dir / "pipe"
    os.mkfifo(fifo)
    refused = httpx.get(f"{envd_debug.url}/files", params={"path": str(fifo)}, timeout=5)
    assert refused.status_code == 400
    assert refused.json() == {"code": 400, "message": f"path '{fifo}' is not a file"}
    null = httpx.get(f"{envd_debug.url}/files", params={"path": "/dev/null"})
    assert (null.status_code, null.content) == (200, b"")


def test_a_small_file_rewritten_meanwhile_reads_whole(
    envd_debug: EnvdProcess, user_dir: Path
) -> None:
    """A status file a program rewrites in place (truncate, then write: what ``echo n > f``
    does) is read as it was at one instant: empty or one whole value, never a transfer cut
    short because the file shrank between its stat and its read (the npm stateful test's
    counter read failed so, ~1 in 15 runs)."""
    target = user_dir / "count"
    target.write_text("0\n")
    stop = threading.Event()

    def rewrite() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            with open(target, "w") as f:  # truncates first
                f.write(f"{i}\n")

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        with httpx.Client(base_url=envd_debug.url) as client:
            for _ in range(400):
                r = client.get("/files", params={"path": str(target)})
                assert r.status_code == 200
                assert r.content == b"" or r.content.endswith(b"\n"), r.content
                assert r.headers.get("content-length") in (None, str(len(r.content)))
    finally:
        stop.set()
        writer.join()
