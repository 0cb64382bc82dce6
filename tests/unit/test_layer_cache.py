"""The layer cache shared by nodes (and CI runs): exports of one layer at once both land."""

from __future__ import annotations

import asyncio
import tarfile
from pathlib import Path

from emberbox.templates import cache
from emberbox.templates.store import TemplateStore

KEY = "a" * 64


async def test_two_exports_of_one_layer_at_once_leave_one_whole_tarball(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path / "data")
    tree = tmp_path / "tree"
    tree.mkdir()
    for n in range(200):
        (tree / f"file{n}").write_bytes(bytes([n]) * 50_000)
    store.publish_layer(KEY, tree)
    cache_dir = tmp_path / "cache"

    tarballs = await asyncio.gather(*(cache.export_layer(store, KEY, cache_dir) for _ in range(4)))

    assert set(tarballs) == {cache_dir / f"{KEY}.tar"}
    with tarfile.open(tarballs[0]) as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
    assert len(files) == 200 and all(m.size == 50_000 for m in files)
    assert [p.name for p in cache_dir.iterdir()] == [f"{KEY}.tar"]
