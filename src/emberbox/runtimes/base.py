"""The one interface every sandbox runtime implements (gVisor now, Firecracker next).

The orchestrator talks only to :class:`Runtime`; a runtime declares what it can do in
:class:`Capabilities` instead of faking it, so the API can answer an honest 501/409.
"""

from __future__ import annotations

import abc
import builtins
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class RuntimeError_(Exception):
    """Base of runtime failures; the orchestrator maps them to sandbox end reasons."""


class CapabilityMissing(RuntimeError_):
    """Raised when an operation the runtime does not declare is asked for."""


class SandboxGone(RuntimeError_):
    """Raised when the runtime no longer has the sandbox (killed, crashed, never existed)."""


@dataclass(frozen=True)
class Capabilities:
    pause: bool = False
    snapshot: bool = False
    fork: bool = False
    egress_rules: bool = False


@dataclass(frozen=True)
class NetworkPolicy:
    """Egress policy; ``allow_internet`` False means no route out at all."""

    allow_internet: bool = True
    allow_out: Sequence[str] = ()
    deny_out: Sequence[str] = ()


@dataclass(frozen=True)
class SandboxSpec:
    """What the orchestrator asks a runtime to start."""

    sandbox_id: str
    template_id: str
    cpu_count: int = 2
    memory_mb: int = 512
    disk_mb: int = 1024
    envs: Mapping[str, str] = field(default_factory=dict)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    pids_limit: int = 1024


class SandboxStatus(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RuntimeSandbox:
    """A sandbox as the runtime sees it: enough to reach envd and any user port."""

    sandbox_id: str
    template_id: str
    address: str  # IP the host reaches the sandbox at
    envd_port: int = 49983
    status: SandboxStatus = SandboxStatus.RUNNING
    oom_killed: bool = False

    @property
    def envd_url(self) -> str:
        return f"http://{self.address}:{self.envd_port}"

    def port_address(self, port: int) -> tuple[str, int]:
        return self.address, port


@dataclass(frozen=True)
class SandboxStats:
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    disk_used: int
    disk_total: int


class Runtime(abc.ABC):
    """Async lifecycle of sandboxes on this node.

    Every method is safe to call after an orchestrator restart: state lives on disk and in the
    kernel (netns, cgroups, runsc state), never only in this process.
    """

    name: str
    capabilities: Capabilities

    @abc.abstractmethod
    async def create(self, spec: SandboxSpec) -> RuntimeSandbox: ...

    @abc.abstractmethod
    async def kill(self, sandbox_id: str) -> None:
        """Stop the sandbox and release every resource; idempotent."""

    @abc.abstractmethod
    async def list(self) -> list[RuntimeSandbox]:
        """Everything this runtime has on the node, so a restarted orchestrator can adopt it."""

    @abc.abstractmethod
    async def stats(self, sandbox_id: str) -> SandboxStats: ...

    async def pause(self, sandbox_id: str) -> None:
        raise CapabilityMissing(f"{self.name} cannot pause sandboxes")

    async def resume(self, sandbox_id: str) -> RuntimeSandbox:
        raise CapabilityMissing(f"{self.name} cannot resume sandboxes")

    async def snapshot(self, sandbox_id: str, snapshot_id: str) -> None:
        raise CapabilityMissing(f"{self.name} cannot snapshot sandboxes")

    async def fork(
        self, sandbox_id: str, new_ids: Sequence[str]
    ) -> builtins.list[RuntimeSandbox]:
        raise CapabilityMissing(f"{self.name} cannot fork sandboxes")

    async def cleanup_orphans(self, keep: Sequence[str]) -> builtins.list[str]:
        """Remove leftovers (netns, veths, mounts, state) of sandboxes not in ``keep``."""
        return []
