"""Files through the official SDK: read/write/list/stat/rename/remove, uploads of every shape."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import pytest
from e2b import FileType, NotFoundException
from e2b.exceptions import InvalidArgumentException, SandboxException
from e2b.sandbox.filesystem.filesystem import WriteEntry


def test_write_read_text_and_bytes(sandbox: Any, workdir: str) -> None:
    info = sandbox.files.write(f"{workdir}/a.txt", "héllo\n")
    assert info.path == f"{workdir}/a.txt"
    assert sandbox.files.read(f"{workdir}/a.txt") == "héllo\n"
    payload = bytes(range(256)) * 10
    sandbox.files.write(f"{workdir}/b.bin", payload)
    assert sandbox.files.read(f"{workdir}/b.bin", format="bytes") == payload


def test_write_creates_parents_and_sets_owner(
    sandbox: Any, workdir: str, sandbox_user: str
) -> None:
    path = f"{workdir}/deep/er/c.txt"
    sandbox.files.write(path, "x")
    info = sandbox.files.get_info(path)
    assert info.owner == sandbox_user
    assert sandbox.files.get_info(f"{workdir}/deep").owner == sandbox_user
    root_path = f"{workdir}/root-owned.txt"
    sandbox.files.write(root_path, "r", user="root")
    assert sandbox.files.get_info(root_path).owner == "root"


def test_relative_paths_resolve_against_home(sandbox: Any) -> None:
    name = f"rel-{os.getpid()}.txt"
    sandbox.files.write(name, "home")
    try:
        assert sandbox.commands.run(f"cat /home/user/{name}").stdout == "home"
    finally:
        sandbox.files.remove(name)


def test_write_files_in_one_request(sandbox: Any, workdir: str) -> None:
    infos = sandbox.files.write_files(
        [
            WriteEntry(path=f"{workdir}/m/one.txt", data="1"),
            WriteEntry(path=f"{workdir}/m/two.txt", data=b"2"),
            WriteEntry(path=f"{workdir}/m/three.txt", data=io.BytesIO(b"3")),
        ]
    )
    assert sorted(i.name for i in infos) == ["one.txt", "three.txt", "two.txt"]
    assert [
        sandbox.files.read(f"{workdir}/m/{n}") for n in ("one.txt", "two.txt", "three.txt")
    ] == [
        "1",
        "2",
        "3",
    ]


def test_octet_stream_and_gzip_uploads(sandbox: Any, workdir: str) -> None:
    data = os.urandom(300_000)
    sandbox.files.write(f"{workdir}/raw.bin", data, use_octet_stream=True)
    assert sandbox.files.read(f"{workdir}/raw.bin", format="bytes") == data
    sandbox.files.write(f"{workdir}/gz.bin", data, gzip=True)
    assert sandbox.files.read(f"{workdir}/gz.bin", format="bytes") == data


def test_metadata_round_trip(sandbox: Any, workdir: str) -> None:
    path = f"{workdir}/meta.txt"
    sandbox.files.write(path, "m", metadata={"Owner": "agent-7", "kind": "note"})
    assert sandbox.files.get_info(path).metadata == {"owner": "agent-7", "kind": "note"}
    sandbox.files.write(path, "m2")
    assert not sandbox.files.get_info(path).metadata  # each upload replaces the set


def test_list_with_depth_exists_info(sandbox: Any, workdir: str) -> None:
    sandbox.files.write(f"{workdir}/top.txt", "12345")
    sandbox.files.write(f"{workdir}/sub/inner.txt", "x")
    sandbox.files.write(f"{workdir}/sub/deeper/leaf.txt", "y")
    shallow = {e.name: e for e in sandbox.files.list(workdir)}
    assert set(shallow) == {"top.txt", "sub"}
    assert shallow["top.txt"].type == FileType.FILE
    assert shallow["top.txt"].size == 5
    assert shallow["sub"].type == FileType.DIR
    deep = {e.path for e in sandbox.files.list(workdir, depth=3)}
    assert f"{workdir}/sub/deeper/leaf.txt" in deep
    assert f"{workdir}/sub/deeper/leaf.txt" not in {
        e.path for e in sandbox.files.list(workdir, depth=2)
    }
    assert sandbox.files.exists(f"{workdir}/top.txt")
    assert not sandbox.files.exists(f"{workdir}/missing.txt")
    info = sandbox.files.get_info(f"{workdir}/top.txt")
    assert info.permissions == "-rw-r--r--"
    assert info.mode == 0o644


def test_symlink_is_reported(sandbox: Any, workdir: str) -> None:
    sandbox.files.write(f"{workdir}/target.txt", "t")
    sandbox.commands.run(f"ln -s {workdir}/target.txt {workdir}/link")
    info = sandbox.files.get_info(f"{workdir}/link")
    assert info.type == FileType.SYMLINK
    assert info.symlink_target == f"{workdir}/target.txt"


def test_make_dir_rename_remove(sandbox: Any, workdir: str) -> None:
    assert sandbox.files.make_dir(f"{workdir}/new/nested") is True
    assert sandbox.files.make_dir(f"{workdir}/new/nested") is False
    sandbox.files.write(f"{workdir}/new/nested/f.txt", "f")
    moved = sandbox.files.rename(f"{workdir}/new", f"{workdir}/renamed")
    assert moved.path == f"{workdir}/renamed"
    assert sandbox.files.read(f"{workdir}/renamed/nested/f.txt") == "f"
    sandbox.files.remove(f"{workdir}/renamed")
    assert not sandbox.files.exists(f"{workdir}/renamed")


def test_missing_paths_and_wrong_types(sandbox: Any, workdir: str) -> None:
    with pytest.raises(NotFoundException):
        sandbox.files.read(f"{workdir}/nope.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.list(f"{workdir}/nope")
    with pytest.raises(NotFoundException):
        sandbox.files.rename(f"{workdir}/nope", f"{workdir}/x")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.read(workdir)  # a directory, not a file
    sandbox.files.write(f"{workdir}/file.txt", "f")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.list(f"{workdir}/file.txt")


def _chunks(seed: bytes, total: int, chunk: int = 1024 * 1024) -> Any:
    block = hashlib.sha256(seed).digest() * (chunk // 32)
    sent = 0
    while sent < total:
        yield block[: min(chunk, total - sent)]
        sent += chunk


@pytest.mark.slow
def test_200_mib_upload_and_download_keep_their_checksum(sandbox: Any, workdir: str) -> None:
    size = 200 * 1024 * 1024
    expected = hashlib.sha256()
    for part in _chunks(b"emberbox", size):
        expected.update(part)
    path = f"{workdir}/big.bin"
    sandbox.files.write(path, _chunks(b"emberbox", size))
    inside = sandbox.commands.run(f"sha256sum {path}").stdout.split()[0]
    assert inside == expected.hexdigest()

    downloaded = hashlib.sha256()
    received = 0
    for part in sandbox.files.read(path, format="stream"):
        downloaded.update(part)
        received += len(part)
    assert received == size
    assert downloaded.hexdigest() == expected.hexdigest()


def test_a_rename_keeps_a_rename_s_rules(sandbox: Any, workdir: str) -> None:
    """Onto an existing directory a rename fails (E2B's envd: Go's os.Rename); it used to move
    the source into it and answer the directory's details."""
    sandbox.files.write(f"{workdir}/a.txt", "a")
    sandbox.files.make_dir(f"{workdir}/out/inner")
    with pytest.raises(SandboxException):
        sandbox.files.rename(f"{workdir}/a.txt", f"{workdir}/out")
    assert sandbox.files.read(f"{workdir}/a.txt") == "a"
    assert [e.name for e in sandbox.files.list(f"{workdir}/out")] == ["inner"]
    sandbox.files.write(f"{workdir}/b.txt", "b")
    assert sandbox.files.rename(f"{workdir}/a.txt", f"{workdir}/b.txt").name == "b.txt"
    assert sandbox.files.read(f"{workdir}/b.txt") == "a"  # a file replaces a file
