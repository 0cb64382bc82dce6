"""What the control plane needs from a sandbox backend, and nothing more.

The API and the reaper call only this protocol. ``LocalProcessBackend`` (dev/test, no isolation)
and the orchestrator-backed one (gVisor) implement it; a backend states what it cannot do in
:class:`BackendCapabilities` so the API answers an honest 501 instead of faking it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ...runtimes.base import SandboxStats

ENVD_PORT = 49983


class BackendError(Exception):
    """The backend failed; the message is safe to show to the API caller."""


class NotSupported(BackendError):
    """The backend cannot do this at all (pause on a runtime without it, egress rules, ...)."""


@dataclass(frozen=True)
class BackendCapabilities:
    pause: bool = False
    no_internet: bool = False  # can honour allow_internet_access=false
    egress_rules: bool = False  # can honour allowOut/denyOut lists
    isolation: bool = False


@dataclass(frozen=True)
class BackendSpec:
    """Everything a backend needs to start one sandbox and initialise its envd."""

    sandbox_id: str
    template_id: str
    cpu_count: int
    memory_mb: int
    disk_mb: int
    env_vars: Mapping[str, str] = field(default_factory=dict)
    access_token: str = ""
    allow_internet: bool = True
    timeout_s: int = 300


@dataclass(frozen=True)
class BackendSandbox:
    """A started sandbox: where envd answers and at which host address user ports live."""

    sandbox_id: str
    envd_url: str
    host: str
    envd_version: str
    stopped: bool = False  # the runtime still has it, but it no longer runs
    oom_killed: bool = False  # set by runtimes that can tell an OOM kill from other ends


class SandboxBackend(Protocol):
    name: str
    capabilities: BackendCapabilities

    async def start(self) -> None:
        """Prepare (directories, clients); called once before any other method."""

    async def close(self) -> None:
        """Release clients; must not kill sandboxes (they outlive a server restart)."""

    async def create(self, spec: BackendSpec) -> BackendSandbox:
        """Start the sandbox and return once envd is initialised and ready."""

    async def kill(self, sandbox_id: str) -> None:
        """Stop it and free everything; idempotent, unknown IDs are fine."""

    async def list(self) -> list[BackendSandbox]:
        """Everything on the node (stopped ones flagged), to reconcile with the database."""

    async def stats(self, sandbox_id: str) -> SandboxStats | None:
        """Current usage, or None when the backend cannot tell."""

    async def set_timeout(self, sandbox_id: str, timeout_s: int) -> None:
        """Tell a backend that enforces end times itself; the server's reaper stays in charge."""

    async def pause(self, sandbox_id: str) -> None:
        """Raise :class:`NotSupported` unless ``capabilities.pause``."""

    async def resume(self, sandbox_id: str) -> BackendSandbox:
        """Raise :class:`NotSupported` unless ``capabilities.pause``."""


def port_target(envd_url: str, host: str, port: int) -> tuple[str, int]:
    """Where a sandbox port lives: envd's own URL for 49983, else ``host:port``."""
    if port == ENVD_PORT:
        hostport = envd_url.split("://", 1)[-1].rstrip("/")
        h, _, p = hostport.rpartition(":")
        return h.strip("[]"), int(p)
    return host, port
