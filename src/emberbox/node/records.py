"""The node's on-disk record per sandbox: which template, where envd answers, its token.

Written before the runtime creates anything and removed after it released everything, so
after a SIGKILL the next node process knows which runtime sandboxes are its own. End times
are not here: they belong to the control plane's database.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..host.files import write_atomic

ALL_VOLUMES = "*"


@dataclass
class SandboxRecord:
    sandbox_id: str
    template_id: str
    created_at: float
    state: str = "creating"  # creating | running | paused
    # Disk what its pause saved takes, while it is paused: the node's listing carries it, so a
    # control plane that never got the pause's answer (a crash, a lost reply) still counts it.
    paused_bytes: int = 0
    # While it is paused: whether its memory was kept (a resume continues its processes), or
    # only its files (a resume boots it afresh). The listing carries it, for the same reason.
    kept_memory: bool = True
    envd_url: str = ""
    host: str = ""
    envd_version: str = ""
    # The sandbox's trust store holds the egress gateway's CA (header rules were given).
    trusts_egress_ca: bool = False
    # The volumes it mounts: they stay mounted, and cannot be deleted, while it lives. A
    # record from before records named them holds ALL_VOLUMES: any volume may be mounted.
    volumes: list[str] = field(default_factory=list)
    # Env vars its create gave it that its runtime's own record may lack (a pooled sandbox
    # gets them at /init): a boot from its files hands them to envd again.
    envs: dict[str, str] = field(default_factory=dict)


class RecordStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, sandbox_id: str) -> Path:
        return self.directory / f"{sandbox_id}.json"

    def save(self, record: SandboxRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(record.sandbox_id), json.dumps(asdict(record)))

    def load_all(self) -> dict[str, SandboxRecord]:
        out: dict[str, SandboxRecord] = {}
        if not self.directory.exists():
            return out
        for path in self.directory.glob("*.json"):
            try:
                data = json.loads(path.read_text())
                data.setdefault("volumes", [ALL_VOLUMES])
                record = SandboxRecord(**data)
            except (ValueError, TypeError):
                path.unlink(missing_ok=True)  # torn write or an older format: not adoptable
                continue
            out[record.sandbox_id] = record
        return out

    def delete(self, sandbox_id: str) -> None:
        self._path(sandbox_id).unlink(missing_ok=True)
