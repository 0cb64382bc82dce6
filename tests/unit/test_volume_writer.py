"""A volume upload (``FileWriter``) on a real directory: whatever ends it (a commit, an abort, a
commit that fails), the directory holds the old file or the new one and nothing else, and the
node keeps no descriptor into the volume, which would keep its filesystem from unmounting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emberbox.node.volumes.contents import ContentError, FileWriter, Owner


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_name_of_name_max_uploads(tmp_path: Path) -> None:
    before = _fds()
    name = "n" * 255  # NAME_MAX: the upload's own temporary name must not add to it
    writer = FileWriter(tmp_path, f"/{name}", Owner(uid=os.getuid(), gid=os.getgid()), False)
    writer.write(b"whole")
    assert writer.commit()["size"] == 5
    assert os.listdir(tmp_path) == [name]
    assert (tmp_path / name).read_bytes() == b"whole"
    assert _fds() == before


def test_an_aborted_upload_leaves_the_old_file_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    before = _fds()
    writer = FileWriter(tmp_path, "/f", Owner(uid=os.getuid(), gid=os.getgid()), False)
    writer.write(b"half of the new")
    assert os.listdir(tmp_path) == ["f"], "the upload's bytes have no name"
    writer.close()
    assert os.listdir(tmp_path) == ["f"] and (tmp_path / "f").read_bytes() == b"old"
    assert _fds() == before


def test_a_failed_commit_leaves_nothing_and_no_descriptor(tmp_path: Path) -> None:
    before = _fds()
    writer = FileWriter(tmp_path, "/f", Owner(uid=os.getuid(), gid=os.getgid()), False)
    writer.write(b"new")
    (tmp_path / "f").mkdir()  # the target became a directory meanwhile: the rename fails
    (tmp_path / "f" / "inside").write_bytes(b"")
    with pytest.raises(OSError):
        writer.commit()
    assert os.listdir(tmp_path) == ["f"]
    assert _fds() == before


def test_over_name_max_is_refused_at_once(tmp_path: Path) -> None:
    before = _fds()
    with pytest.raises((ContentError, OSError)):
        FileWriter(tmp_path, "/" + "n" * 256, Owner(), False)
    assert _fds() == before
