"""The orchestrator's own on-disk record per sandbox (end time, metadata, envd token).

Written before the runtime creates anything and removed after it released everything, so
after a SIGKILL the next orchestrator knows which runtime sandboxes are ours and when each
must end.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class SandboxRecord:
    sandbox_id: str
    template_id: str
    started_at: float
    end_at: float
    state: str = "creating"  # creating | running | paused
    metadata: dict[str, str] = field(default_factory=dict)
    envd_access_token: str | None = None
    address: str | None = None


class RecordStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, sandbox_id: str) -> Path:
        return self.directory / f"{sandbox_id}.json"

    def save(self, record: SandboxRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{record.sandbox_id}.tmp"
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, self._path(record.sandbox_id))

    def load_all(self) -> dict[str, SandboxRecord]:
        out: dict[str, SandboxRecord] = {}
        if not self.directory.exists():
            return out
        for path in self.directory.glob("*.json"):
            try:
                record = SandboxRecord(**json.loads(path.read_text()))
            except (ValueError, TypeError):
                path.unlink(missing_ok=True)  # torn write from a killed process
                continue
            out[record.sandbox_id] = record
        return out

    def delete(self, sandbox_id: str) -> None:
        self._path(sandbox_id).unlink(missing_ok=True)
