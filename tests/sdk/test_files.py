"""Files through our SDK, once per face: every call, bad paths, and streamed transfers."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from emberbox import (
    FileNotFoundException,
    FilesystemEventType,
    FileType,
    InvalidArgumentException,
    WriteEntry,
)
from tests.sdk.conftest import eventually, items, maybe


@pytest.fixture
async def workdir(sandbox: Any) -> AsyncIterator[str]:
    path = f"/tmp/emberbox-sdk-{uuid.uuid4().hex[:10]}"
    assert await maybe(sandbox.files.make_dir(path)) is True
    yield path
    await maybe(sandbox.files.remove(path))


async def test_write_read_every_shape(sandbox: Any, workdir: str) -> None:
    await maybe(sandbox.files.write(f"{workdir}/t.txt", "text ✓"))
    assert await maybe(sandbox.files.read(f"{workdir}/t.txt")) == "text ✓"
    await maybe(sandbox.files.write(f"{workdir}/b.bin", b"\x00\x01"))
    assert await maybe(sandbox.files.read(f"{workdir}/b.bin", format="bytes")) == b"\x00\x01"
    await maybe(sandbox.files.write(f"{workdir}/f.bin", io.BytesIO(b"from a file object")))
    stream = await maybe(sandbox.files.read(f"{workdir}/f.bin", format="stream"))
    assert b"".join(await items(stream)) == b"from a file object"


async def test_write_files_list_info_rename_remove(sandbox: Any, workdir: str) -> None:
    written = await maybe(
        sandbox.files.write_files(
            [WriteEntry(f"{workdir}/a/1.txt", "1"), WriteEntry(f"{workdir}/a/b/2.txt", b"22")]
        )
    )
    assert sorted(w.name for w in written) == ["1.txt", "2.txt"]
    top = await maybe(sandbox.files.list(f"{workdir}/a"))
    assert {(e.name, e.type) for e in top} == {("1.txt", FileType.FILE), ("b", FileType.DIR)}
    deep = await maybe(sandbox.files.list(f"{workdir}/a", depth=2))
    assert f"{workdir}/a/b/2.txt" in {e.path for e in deep}
    info = await maybe(sandbox.files.get_info(f"{workdir}/a/b/2.txt"))
    assert (info.size, info.type) == (2, FileType.FILE)
    moved = await maybe(sandbox.files.rename(f"{workdir}/a", f"{workdir}/z"))
    assert moved.path == f"{workdir}/z"
    assert await maybe(sandbox.files.exists(f"{workdir}/z/1.txt"))
    assert not await maybe(sandbox.files.exists(f"{workdir}/a"))
    assert await maybe(sandbox.files.make_dir(f"{workdir}/z")) is False
    await maybe(sandbox.files.remove(f"{workdir}/z"))
    assert not await maybe(sandbox.files.exists(f"{workdir}/z"))


async def test_missing_and_wrong_paths(sandbox: Any, workdir: str) -> None:
    with pytest.raises(FileNotFoundException):
        await maybe(sandbox.files.read(f"{workdir}/none"))
    with pytest.raises(FileNotFoundException):
        await maybe(sandbox.files.get_info(f"{workdir}/none"))
    with pytest.raises(InvalidArgumentException):
        await maybe(sandbox.files.read(workdir))
    stream = await maybe(sandbox.files.read(f"{workdir}/none", format="stream"))
    with pytest.raises(FileNotFoundException):
        await items(stream)


async def test_watch_dir_pushes_events(sandbox: Any, workdir: str) -> None:
    events: list[Any] = []
    handle = await maybe(sandbox.files.watch_dir(workdir, on_event=events.append, recursive=True))
    await maybe(sandbox.files.write(f"{workdir}/sub/new.txt", "x"))
    await eventually(lambda: any(e.name == "sub/new.txt" for e in events))
    await maybe(handle.stop())
    assert ("sub", FilesystemEventType.CREATE) in {(e.name, e.type) for e in events}
    assert any(e.name == "sub/new.txt" for e in events)
