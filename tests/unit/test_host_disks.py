"""Sandbox disks copied from one formatted ext4 per size: each is a whole, separate, sparse
file system (real mkfs, loop mounts and fsck; needs root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emberbox.host import commands, rootfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")


def test_copy_sparse_keeps_data_and_holes(tmp_path: Path) -> None:
    source = tmp_path / "source"
    with open(source, "wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"a" * 4096)
        f.seek(40 << 20)
        f.write(b"b" * 8192)
    target = tmp_path / "target"
    rootfs.copy_sparse(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_blocks * 512 <= 64 * 1024, "the holes were written out"


async def test_disks_from_one_formatted_ext4_are_separate(tmp_path: Path) -> None:
    formatted = tmp_path / "formatted"
    disks = [(tmp_path / f"disk{i}.img", tmp_path / f"mnt{i}") for i in range(2)]
    try:
        for image, mountpoint in disks:
            await rootfs.make_disk(image, mountpoint, 64, formatted)
        (pristine,) = formatted.iterdir()  # made once, for both
        assert pristine.name.startswith("ext4-64m-") and not list(formatted.glob(".*"))
        (disks[0][1] / "only-here").write_text("zero")
        assert not (disks[1][1] / "only-here").exists()
        for image, mountpoint in disks:
            usage = os.statvfs(mountpoint)
            assert 48 << 20 < usage.f_blocks * usage.f_frsize <= 64 << 20  # less its journal
            assert image.stat().st_blocks * 512 < 4 << 20, "a copy allocated the whole disk"
    finally:
        for _, mountpoint in disks:
            await commands.run("umount", str(mountpoint), check=False)
    for image, _ in disks:  # each is a consistent file system on its own
        fsck = await commands.run("e2fsck", "-fn", str(image), check=False)
        assert fsck.code == 0, fsck.stdout + fsck.stderr
    assert b"zero" not in pristine.read_bytes(), "a disk wrote into the formatted original"
