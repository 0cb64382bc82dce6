"""Where volumes live on the node: ``<data_dir>/volumes/<id>/`` holds ``disk.img``, a sparse
ext4 whose size is the volume's hard quota, mounted at ``data/``. When to mount and unmount is
``service.NodeVolumes``'s call."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

from ...host import commands as _proc
from ...host import rootfs
from ...vocabulary import DEFAULT_UID, is_volume_id

log = logging.getLogger(__name__)


class VolumeStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "volumes"

    def _dir(self, volume_id: str) -> Path:
        if not is_volume_id(volume_id):
            raise ValueError(f"not a volume id: {volume_id!r}")
        return self.root / volume_id

    def exists(self, volume_id: str) -> bool:
        return (self._dir(volume_id) / "disk.img").exists()

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if is_volume_id(p.name))

    def data(self, volume_id: str) -> Path:
        """The mounted directory: what sandboxes see at their mount path."""
        return self._dir(volume_id) / "data"

    async def create(self, volume_id: str, size_mb: int) -> None:
        """A new, empty, mounted volume whose root belongs to the sandboxes' user."""
        home = self._dir(volume_id)
        home.mkdir(parents=True)
        try:
            await rootfs.make_disk(home / "disk.img", home / "data", size_mb)
            data = home / "data"
            shutil.rmtree(data / "lost+found", ignore_errors=True)
            os.chown(data, DEFAULT_UID, DEFAULT_UID)
            data.chmod(0o755)
        except BaseException:
            await self.remove(volume_id)
            raise

    async def mount(self, volume_id: str) -> None:
        home = self._dir(volume_id)
        if not (home / "disk.img").exists():
            log.error("volume %s has no disk image; its contents are lost", volume_id)
            return
        if not rootfs.mounted(home / "data"):
            (home / "data").mkdir(exist_ok=True)
            await _proc.run("mount", "-o", "loop,nodev,nosuid", str(home / "disk.img"),
                            str(home / "data"))  # fmt: skip

    async def unmount(self, volume_id: str) -> None:
        """Never lazily: a volume still busy (a sandbox this node did not know of, a record
        from an older node) stays mounted rather than being detached under it."""
        data = self._dir(volume_id) / "data"
        if rootfs.mounted(data):
            await _proc.run("umount", str(data))

    async def remove(self, volume_id: str) -> None:
        """Unmount and delete the volume's image: only once no sandbox mounts it."""
        home = self._dir(volume_id)
        await rootfs.unmount(home / "data")
        if rootfs.mounted(home / "data"):
            raise OSError(f"volume {volume_id} is still mounted")
        await asyncio.to_thread(shutil.rmtree, home, True)
