"""Flatten a template's layers into one ext4 image (``mkfs.ext4 -d``) for Firecracker.

The layers are merged by a read-only overlayfs mount, so whiteouts are applied exactly as a
sandbox would see them; the image is written next to the store and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ..host.rootfs import sparse_file
from . import _run
from .store import Template, TemplateStore

HEADROOM = 1.25
EXTRA_MB = 256


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


async def build_ext4(store: TemplateStore, template: Template) -> Path:
    target = store.images_dir / f"{template.id}.ext4"
    if target.exists():
        return target
    store.images_dir.mkdir(parents=True, exist_ok=True)
    layers = store.layer_paths(template)
    scratch = store.scratch("ext4-")
    merged = scratch / "merged"
    merged.mkdir()
    mounted = False
    try:
        if len(layers) == 1:
            source = layers[0]
        else:
            lowerdir = ":".join(str(p) for p in reversed(layers))
            await _run.run("mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowerdir}",
                           str(merged))  # fmt: skip
            mounted, source = True, merged
        size_mb = int(_tree_bytes(source) * HEADROOM / 2**20) + EXTRA_MB
        image = scratch / "rootfs.ext4"
        sparse_file(image, size_mb * 2**20)
        await _run.run("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(source), str(image),
                       step="mkfs.ext4 -d")  # fmt: skip
        os.replace(image, target)
    finally:
        if mounted:
            await _run.run("umount", str(merged))
        shutil.rmtree(scratch, ignore_errors=True)
    return target
