"""A directory of layer tarballs (``<key>.tar``) that outlives the data dir, e.g. a CI cache.

Tarballs keep owners, modes, xattrs and device nodes, so overlayfs whiteouts and opaque
directories survive the round trip.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..host.files import replacing
from . import _run
from .store import TemplateStore

TAR_FLAGS = ("--xattrs", "--xattrs-include=*", "--numeric-owner")


async def export_layer(store: TemplateStore, key: str, cache_dir: Path) -> Path:
    """Write ``<key>.tar`` beside its place and rename it in (:func:`replacing`): two builds
    exporting the same layer at once (two nodes, one cache) each publish a whole tarball."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{key}.tar"
    with replacing(target) as (fd, tmp):
        os.close(fd)  # tar writes the file by its name
        await _run.run("tar", *TAR_FLAGS, "-C", str(store.layer_path(key)), "-cf", str(tmp), ".")
    return target


async def import_layer(store: TemplateStore, key: str, cache_dir: Path) -> bool:
    """Unpack ``<key>.tar`` into the store if the cache has it; True when it did."""
    tarball = cache_dir / f"{key}.tar"
    if not tarball.is_file():
        return False
    scratch = store.scratch("import-")
    tree = scratch / "tree"
    tree.mkdir()
    try:
        await _run.run("tar", *TAR_FLAGS, "-xpf", str(tarball), "-C", str(tree))
        store.publish_layer(key, tree)
    finally:
        await _run.run("rm", "-rf", "--one-file-system", str(scratch))
    return True


def prune(cache_dir: Path, keep: Iterable[str]) -> list[str]:
    """Drop tarballs of layers no longer produced, so the cache does not grow forever."""
    wanted = {f"{k}.tar" for k in keep}
    removed = []
    if cache_dir.is_dir():
        for p in cache_dir.glob("*.tar"):
            if p.name not in wanted:
                p.unlink(missing_ok=True)  # another build sharing the cache may prune it too
                removed.append(p.name)
    return removed
