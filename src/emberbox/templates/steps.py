"""What a template build needs from a runtime: run one step, boot the result once.

Builds depend on this small interface, not on a runtime class, so ``templates/`` never imports
``runtimes/`` (runtimes read the template store; the arrow points one way). Whoever starts a
build (the CLI, ``python -m emberbox.templates``) hands it a runtime that implements it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from .store import Template, TemplateError


@dataclass(frozen=True)
class Mount:
    """A host path visible inside the build sandbox (read-only)."""

    source: Path
    target: str


@dataclass(frozen=True)
class Step:
    """One process run to completion in a fresh sandbox of ``template``.

    Its writes land in the host directory ``upper``, which survives the sandbox so the builder
    can keep it as a layer; what it prints goes to ``log``.
    """

    sandbox_id: str
    template: Template
    args: Sequence[str]
    upper: Path
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "/"
    user: tuple[int, int] = (0, 0)
    mounts: Sequence[Mount] = ()
    timeout: float | None = None
    allow_internet: bool = True
    cpu_count: int = 2
    memory_mb: int = 2048
    disk_mb: int = 8192
    pids_limit: int = 4096


class BootFailed(TemplateError):
    """A built template did not come up (envd or its ready check never answered)."""


@runtime_checkable
class StepRunner(Protocol):
    async def run_step(self, step: Step) -> int:
        """Run the step; returns its exit code."""

    async def boot_check(self, sandbox_id: str, template: Template, allow_internet: bool) -> None:
        """Boot ``template`` once, wait for envd and its ready check, stop it; raises
        :class:`BootFailed` with the reason when it does not come up."""
