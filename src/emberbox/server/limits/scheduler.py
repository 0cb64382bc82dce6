"""Node resource accounting: does one more sandbox fit without overcommitting past the ratio?"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Capacity


@dataclass(frozen=True)
class Usage:
    cpus: int
    memory_mb: int


class ResourceScheduler:
    """Pure bookkeeping; the caller serialises admission and supplies current usage."""

    def __init__(self, capacity: Capacity) -> None:
        self.cpu_limit = int(capacity.cpus * capacity.cpu_overcommit)
        self.memory_limit_mb = int(capacity.memory_mb * capacity.memory_overcommit)

    def refusal(self, used: Usage, cpus: int, memory_mb: int) -> str | None:
        """None when it fits, else a message saying what is short."""
        if used.cpus + cpus > self.cpu_limit:
            return (
                f"node is out of CPU: {used.cpus} of {self.cpu_limit} vCPUs allocated, "
                f"sandbox needs {cpus}"
            )
        if used.memory_mb + memory_mb > self.memory_limit_mb:
            return (
                f"node is out of memory: {used.memory_mb} of {self.memory_limit_mb} MiB "
                f"allocated, sandbox needs {memory_mb}"
            )
        return None
