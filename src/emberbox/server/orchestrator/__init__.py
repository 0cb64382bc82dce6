"""The node orchestrator: sandbox lifecycle, end times, stats and crash recovery."""

from .orchestrator import Orchestrator, RecoveryReport, Sandbox, SandboxNotFound, new_sandbox_id
from .records import RecordStore, SandboxRecord

__all__ = [
    "Orchestrator",
    "RecordStore",
    "RecoveryReport",
    "Sandbox",
    "SandboxNotFound",
    "SandboxRecord",
    "new_sandbox_id",
]
