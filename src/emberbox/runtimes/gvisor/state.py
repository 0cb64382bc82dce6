"""The on-disk record of one sandbox: written before any resource exists, so a restarted
orchestrator (or a cleanup after SIGKILL) can find and release everything it names."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...host.files import write_atomic


@dataclass
class SandboxRecord:
    sandbox_id: str
    template_id: str
    created_at: float
    cpu_count: int
    memory_mb: int
    disk_mb: int
    lease_index: int | None = None
    address: str | None = None
    external_upper: str | None = None  # template builds keep their writable layer
    volumes: bool = False  # host directories are bound in: no checkpoint can hold them
    # The policy as given (allow_out, deny_out, allow_internet) when the egress gateway judges
    # the sandbox's traffic: the gateway of a restarted node finds the rules here.
    egress: dict[str, Any] | None = None
    # Its resolv.conf names its host end of the link, so its DNS always goes to the gateway.
    node_dns: bool = False
    # Which of the variables PID 1 needs (PATH, HOME, ...) are its own: its create gave them
    # or its snapshot carried them, so envd hands them to commands (else they are the
    # template's). Kept for its boots from files.
    own_init_vars: list[str] = field(default_factory=list)

    def save(self, directory: Path) -> None:
        write_atomic(directory / "state.json", json.dumps(asdict(self)))

    @classmethod
    def load(cls, directory: Path) -> SandboxRecord | None:
        try:
            return cls(**json.loads((directory / "state.json").read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None


PARTIAL_SUFFIX = ".partial"


def partial(path: Path) -> Path:
    """Where a save writes ``path`` until it is whole (then renamed over it): a node killed
    meanwhile leaves only names with this suffix, which its next start removes."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


@dataclass(frozen=True)
class SandboxPaths:
    """Where one sandbox's pieces live; only a function of its directory."""

    root: Path

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def disk_image(self) -> Path:
        return self.root / "disk.img"

    @property
    def disk(self) -> Path:
        return self.root / "disk"

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def etc(self) -> Path:
        """Per-sandbox files bind-mounted over the template's (hosts, hostname, /.e2b)."""
        return self.root / "etc"

    @property
    def memory(self) -> Path:
        """The checkpoint of a paused sandbox; it exists only while the sandbox is paused."""
        return self.root / "memory"

    @property
    def files(self) -> Path:
        """What a filesystem-only pause kept (``guest_files.py``), while it is paused so."""
        return self.root / "files.tar"

    @property
    def rollback(self) -> Path:
        """A snapshot's checkpoint being linked in for a rollback, until it is whole and renamed
        to :attr:`memory` (a node killed meanwhile leaves it: its successor removes it)."""
        return partial(self.root / "rollback")

    @property
    def saving(self) -> Path:
        """Present while a save reads its files with its processes stopped."""
        return self.root / "saving"

    @property
    def kept(self) -> Path:
        """Present while a paused sandbox's processes are kept for a fast resume (``kept.py``),
        so a node's successor keeps them too; its time is the pause's."""
        return self.root / "kept"

    def paused(self) -> bool:
        return self.memory.is_dir() or self.files.is_file()

    @property
    def log(self) -> Path:
        return self.root / "runsc.log"
