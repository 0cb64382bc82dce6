"""A client process that streams a large file both ways and reports its own peak memory.

    python tests/sdk/stream_client.py sync|async SIZE_MIB PATH

Prints one JSON line: sha256 sent, sha256 received, bytes received, peak RSS in MiB.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import AsyncIterator, Iterator

from emberbox import AsyncSandbox, Sandbox

CHUNK = 1024 * 1024


def blocks(size_mib: int) -> Iterator[bytes]:
    for i in range(size_mib):
        yield hashlib.sha256(str(i).encode()).digest() * (CHUNK // 32)


def expected_digest(size_mib: int) -> str:
    digest = hashlib.sha256()
    for block in blocks(size_mib):
        digest.update(block)
    return digest.hexdigest()


def run_sync(size_mib: int, path: str) -> tuple[str, int]:
    sandbox = Sandbox(debug=True)
    sandbox.files.write(path, _FileLike(blocks(size_mib)))
    digest, received = hashlib.sha256(), 0
    for chunk in sandbox.files.read(path, format="stream"):
        digest.update(chunk)
        received += len(chunk)
    sandbox.close()
    return digest.hexdigest(), received


async def run_async(size_mib: int, path: str) -> tuple[str, int]:
    sandbox = await AsyncSandbox.create(debug=True)

    async def source() -> AsyncIterator[bytes]:
        for block in blocks(size_mib):
            yield block

    await sandbox.files.write(path, source())
    digest, received = hashlib.sha256(), 0
    async for chunk in await sandbox.files.read(path, format="stream"):
        digest.update(chunk)
        received += len(chunk)
    await sandbox.close()
    return digest.hexdigest(), received


def peak_rss_mib() -> float:
    """VmHWM of this process image; ru_maxrss would carry the forking parent's peak over exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class _FileLike:
    """A read()-able view over a generator, as a user's file object would be."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        return next(self._chunks, b"")


def main() -> None:
    face, size_mib, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if face == "sync":
        received_digest, received = run_sync(size_mib, path)
    else:
        received_digest, received = asyncio.run(run_async(size_mib, path))
    peak_mib = peak_rss_mib()
    print(
        json.dumps(
            {
                "sent": expected_digest(size_mib),
                "received": received_digest,
                "bytes": received,
                "peak_rss_mib": round(peak_mib, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
