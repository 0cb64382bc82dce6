"""The sandbox's root: read-only template layers under a kernel overlayfs whose upper dir
lives on a per-sandbox, size-limited ext4 (a sparse file on a loop device).

Why kernel overlayfs and not runsc's ``--overlay2``: the upper dir is a plain directory tree, so
a template build can keep it as the next layer, and the loop ext4 gives a hard disk quota that
does not count against the sandbox's memory (``--overlay2=root:memory`` would).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from . import commands as _proc


def overlay_options(lower: Sequence[Path], upper: Path, work: Path) -> str:
    """Mount options for overlayfs; ``lower`` is ordered bottom (base) to top."""
    if not lower:
        raise ValueError("a root filesystem needs at least one template layer")
    for layer in lower:
        if "," in str(layer) or ":" in str(layer):
            raise ValueError(f"layer path not usable by overlayfs: {layer}")
    lowerdir = ":".join(str(p) for p in reversed(lower))
    return f"lowerdir={lowerdir},upperdir={upper},workdir={work}"


def sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


async def make_disk(image: Path, mountpoint: Path, size_mb: int) -> None:
    """Create and mount a sparse ext4 of ``size_mb``; blocks are only used when written."""
    if size_mb < 16:
        raise ValueError(f"disk_mb must be at least 16, got {size_mb}")
    sparse_file(image, size_mb * 1024 * 1024)
    await _proc.run(
        "mkfs.ext4", "-q", "-F", "-m", "0",
        "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", str(image),
    )  # fmt: skip
    mountpoint.mkdir(parents=True, exist_ok=True)
    # `-o loop` sets autoclear: the loop device goes away with the last unmount.
    await _proc.run("mount", "-o", "loop,nodev,nosuid", str(image), str(mountpoint))


async def mount_root(lower: Sequence[Path], upper: Path, target: Path) -> None:
    work = upper.parent / (upper.name + ".work")
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    await _proc.run(
        "mount", "-t", "overlay", "overlay", "-o", overlay_options(lower, upper, work), str(target)
    )


async def mount_lower(lower: Sequence[Path], target: Path) -> None:
    """Read-only merged view of the layers (overlayfs needs two lowers without an upper)."""
    target.mkdir(parents=True, exist_ok=True)
    if len(lower) == 1:
        await _proc.run("mount", "--bind", "-o", "ro", str(lower[0]), str(target))
        return
    lowerdir = ":".join(str(p) for p in reversed(lower))
    await _proc.run("mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowerdir}",
                    str(target))  # fmt: skip


def mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


async def unmount(path: Path) -> None:
    """Unmount if mounted; fall back to a lazy unmount so teardown never wedges."""
    if not mounted(path):
        return
    done = await _proc.run("umount", str(path), check=False)
    if done.code != 0 and mounted(path):
        await _proc.run("umount", "-l", str(path))


async def remove_work_dir(upper: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        work = upper.parent / (upper.name + ".work")
        await _proc.run("rm", "-rf", "--one-file-system", str(work))
