"""``guest_files.load`` on plain directories: what a rebooted sandbox's PID 1 does with the
saved tar, for the replacements a walk over a real overlay cannot set up (the template would
need them): a symlink to a directory turned into a directory, a file into a directory."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from emberbox.runtimes.gvisor import guest_files


def _tar(members: list[tuple[str, bytes | None, int]], paths: list[str]) -> io.BytesIO:
    """A tar as ``save`` writes it: directories (content None) and files, then the list."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, mode in members:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid = mode, os.getuid(), os.getgid()
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        listing = b"\0".join(p.encode() for p in paths)
        info = tarfile.TarInfo(guest_files.PATHS_MEMBER)
        info.size = len(listing)
        tar.addfile(info, io.BytesIO(listing))
    out.seek(0)
    return out


def test_a_symlink_to_a_directory_replaced_by_a_directory(tmp_path: Path) -> None:
    (tmp_path / "bar").mkdir(mode=0o755)
    (tmp_path / "bar" / "kept").write_text("template")
    (tmp_path / "foo").symlink_to("bar")
    saved = _tar([("foo", None, 0o700), ("foo/x", b"mine", 0o644)],
                 ["bar", "bar/kept", "foo", "foo/x"])  # fmt: skip
    guest_files.load(str(tmp_path), saved)
    assert not (tmp_path / "foo").is_symlink() and (tmp_path / "foo" / "x").read_text() == "mine"
    assert sorted(os.listdir(tmp_path / "bar")) == ["kept"]
    assert (tmp_path / "bar").stat().st_mode & 0o777 == 0o755  # not chmod'ed through the link


def test_a_file_turned_directory_and_deletions(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "issue").write_text("template")
    (tmp_path / "etc" / "gone").write_text("template")
    (tmp_path / "usr" / "doc").mkdir(parents=True)
    (tmp_path / "usr" / "doc" / "a").write_text("template")
    saved = _tar([("etc/issue", None, 0o755), ("etc/issue/file", b"inside", 0o644)],
                 ["etc", "etc/issue", "etc/issue/file", "usr"])  # fmt: skip
    guest_files.load(str(tmp_path), saved)
    assert (tmp_path / "etc" / "issue" / "file").read_text() == "inside"
    assert not (tmp_path / "etc" / "gone").exists()
    assert (tmp_path / "usr").is_dir() and not (tmp_path / "usr" / "doc").exists()


def test_a_tar_without_its_list_of_paths_is_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w"):
        pass
    out.seek(0)
    (tmp_path / "kept").write_text("x")
    try:
        guest_files.load(str(tmp_path), out)
    except ValueError as exc:
        assert "list of paths" in str(exc)
    else:
        raise AssertionError("loaded a tar without its list of paths")
    assert (tmp_path / "kept").exists()  # nothing deleted
