"""Which templates exist and what resources each asks for.

Until the template store lands this is a static catalog: ``base`` plus any templates given as JSON
in ``EMBERBOX_TEMPLATES`` (``{"name": {"cpuCount": 2, "memoryMB": 512, "diskSizeMB": 1024}}``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ...vocabulary import (
    DEFAULT_CPU_COUNT,
    DEFAULT_DISK_MB,
    DEFAULT_MEMORY_MB,
    template_ref_parts,
)


@dataclass(frozen=True)
class TemplateInfo:
    """``template_id`` is what the node starts sandboxes from; ``public_id``, when set, is
    the id the API shows for it instead (a team template's id: its builds' store names are
    the node's business)."""

    template_id: str
    alias: str | None
    cpu_count: int = DEFAULT_CPU_COUNT
    memory_mb: int = DEFAULT_MEMORY_MB
    disk_mb: int = DEFAULT_DISK_MB
    public_id: str | None = None


def _builtin_size(name: str) -> tuple[int, int]:
    """(vCPUs, MiB) a template's sandboxes get unless told otherwise: the defaults, or a
    built-in template's own (``code-interpreter``: E2B's size for it)."""
    from ...templates import code_interpreter

    if name == code_interpreter.NAME:
        return code_interpreter.CPU_COUNT, code_interpreter.MEMORY_MB
    return DEFAULT_CPU_COUNT, DEFAULT_MEMORY_MB


# A team's own templates by name or id (``server/builds``): None when the name is not one.
TeamTemplates = Callable[[str, str], Awaitable[TemplateInfo | None]]


class TemplateCatalog(Protocol):
    def resolve(self, name: str) -> TemplateInfo | None:
        """Look up by ID or alias; an optional ``:tag`` suffix is accepted and ignored."""


class StaticTemplates:
    def __init__(self, templates: Mapping[str, TemplateInfo]) -> None:
        self._by_name = dict(templates)

    @classmethod
    def from_env(cls, raw: str | None) -> StaticTemplates:
        found = {"base": TemplateInfo("base", "base")}
        for name, spec in (json.loads(raw) if raw else {}).items():
            cpus, memory = _builtin_size(name)  # what a size not given stays at
            found[name] = TemplateInfo(
                template_id=name,
                alias=name,
                cpu_count=int(spec.get("cpuCount", cpus)),
                memory_mb=int(spec.get("memoryMB", memory)),
                disk_mb=int(spec.get("diskSizeMB", DEFAULT_DISK_MB)),
            )
        return cls(found)

    def resolve(self, name: str) -> TemplateInfo | None:
        return self._by_name.get(template_ref_parts(name)[0])  # (we have a single namespace)


def _builtin_aliases() -> dict[str, str]:
    """Other names of built-in templates: the code-interpreter SDKs ask for
    ``code-interpreter-v1`` by default."""
    from ...templates import code_interpreter

    return {alias: code_interpreter.NAME for alias in code_interpreter.ALIASES}


_BUILTIN_ALIASES = _builtin_aliases()


class StoreTemplates:
    """Templates built into the node's template store (what the gVisor runtime boots).

    Resources come from ``overrides`` (``EMBERBOX_TEMPLATES``) when given, else the built-in
    template's own (``code-interpreter``: E2B's size for it), else the defaults.
    """

    def __init__(self, root: Path, overrides: StaticTemplates) -> None:
        from ...templates.store import TemplateStore

        self.store = TemplateStore(root)
        self.overrides = overrides

    def resolve(self, name: str) -> TemplateInfo | None:
        from ...templates.store import TemplateError

        base = template_ref_parts(name)[0]
        base = _BUILTIN_ALIASES.get(base, base)
        try:
            template = self.store.get(base)
        except TemplateError:
            return None
        sized = self.overrides.resolve(base)
        cpus, memory = _builtin_size(template.name)
        return TemplateInfo(
            template_id=template.name,
            alias=template.name,
            cpu_count=sized.cpu_count if sized else cpus,
            memory_mb=sized.memory_mb if sized else memory,
            disk_mb=sized.disk_mb if sized else DEFAULT_DISK_MB,
        )
