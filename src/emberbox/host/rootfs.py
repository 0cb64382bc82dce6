"""The sandbox's root: read-only template layers under a kernel overlayfs whose upper dir
lives on a per-sandbox, size-limited ext4 (a sparse file on a loop device).

Why kernel overlayfs and not runsc's ``--overlay2``: the upper dir is a plain directory tree, so
a template build can keep it as the next layer, and the loop ext4 gives a hard disk quota that
does not count against the sandbox's memory (``--overlay2=root:memory`` would).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
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


_PARTIAL_STALE_S = 600  # a formatted disk in the making older than this was abandoned
_MKFS = ("mkfs.ext4", "-q", "-F", "-m", "0",
         "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard")  # fmt: skip
# Names a formatted disk together with its size: a change of the options makes new ones.
_MKFS_KEY = hashlib.sha256(" ".join(_MKFS).encode()).hexdigest()[:12]


async def make_disk(
    image: Path, mountpoint: Path, size_mb: int, formatted: Path | None = None
) -> None:
    """Create and mount a sparse ext4 of ``size_mb``; blocks are only used when written.

    ``formatted``: a directory keeping one freshly made ext4 per size, which each new disk
    copies (only its ~0.3 MiB of written blocks) instead of running mkfs (a process and ~5 ms
    of CPU on every sandbox start here)."""
    if size_mb < 16:
        raise ValueError(f"disk_mb must be at least 16, got {size_mb}")
    if formatted is None:
        sparse_file(image, size_mb * 1024 * 1024)
        await _proc.run(*_MKFS, str(image))
    else:
        copy_sparse(await _formatted(formatted, size_mb), image)
    mountpoint.mkdir(parents=True, exist_ok=True)
    # `-o loop` sets autoclear: the loop device goes away with the last unmount.
    await _proc.run("mount", "-o", "loop,nodev,nosuid", str(image), str(mountpoint))


async def _formatted(directory: Path, size_mb: int) -> Path:
    """The pristine ext4 of ``size_mb`` made with :data:`_MKFS` (both name it), made on first
    use. Two makers at once each write their own and the second rename wins: both are
    pristine. A maker killed mid-way leaves its partial file, removed by the next maker."""
    pristine = directory / f"ext4-{size_mb}m-{_MKFS_KEY}.img"
    if not pristine.exists():
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".*.img.*"):
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime > _PARTIAL_STALE_S:
                    stale.unlink()
        partial = directory / f".{pristine.name}.{os.getpid()}.{id(pristine)}"
        try:
            sparse_file(partial, size_mb * 1024 * 1024)
            await _proc.run(*_MKFS, str(partial))
            os.replace(partial, pristine)
        finally:
            partial.unlink(missing_ok=True)
    return pristine


def copy_sparse(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source`` holding blocks only where ``source`` does
    (``SEEK_DATA``/``SEEK_HOLE``, then ``copy_file_range`` in the kernel)."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        dst.truncate(size)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            offset = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            position = start
            while position < offset:
                copied = os.copy_file_range(
                    src.fileno(), dst.fileno(), offset - position, position, position
                )
                if copied == 0:
                    raise OSError(f"{source} shrank while it was copied")
                position += copied


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
