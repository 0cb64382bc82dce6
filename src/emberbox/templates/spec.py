"""Build specs for custom templates, and the Dockerfile subset that maps onto them.

Accepted instructions: ``FROM <template>`` (one of ours, not an image), ``RUN``, ``COPY
[--chown=u[:g]] src... dest``, ``ENV``, ``WORKDIR``, ``USER``, ``CMD`` (the start command) and
``HEALTHCHECK CMD`` (the ready check). ``LABEL``, ``EXPOSE`` and comments are ignored;
anything else is an error naming the line, since silently skipping it would build the wrong thing.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .store import TemplateError, validate_name

StepKind = Literal["RUN", "COPY", "ENV", "WORKDIR", "USER"]
IGNORED = {"LABEL", "EXPOSE", "MAINTAINER"}


class SpecError(TemplateError):
    """The build spec or Dockerfile is malformed; the message names the line or field."""


@dataclass(frozen=True)
class Step:
    kind: StepKind
    run: str = ""  # RUN: shell command
    sources: tuple[str, ...] = ()  # COPY: paths relative to the context
    dest: str = ""  # COPY destination; WORKDIR path; USER name
    chown: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # ENV pairs
    user: str | None = None  # RUN: run as this user (this step only)
    mode: str | None = None  # COPY: octal mode for the copied files (e.g. "0755")
    archive: str | None = None  # COPY: sources come from this tar in the context, unpacked
    force: bool = False  # never reuse a cached layer for this step (and so none after it)

    def describe(self) -> str:
        if self.kind == "RUN":
            return f"RUN {self.run}" + (f" (as {self.user})" if self.user else "")
        if self.kind == "COPY":
            return f"COPY {' '.join(self.sources)} {self.dest}"
        if self.kind == "ENV":
            return "ENV " + " ".join(f"{k}={v}" for k, v in self.env)
        return f"{self.kind} {self.dest}"


@dataclass(frozen=True)
class BuildSpec:
    """**Parameters:** parent - template to start from; steps - in order; context - directory
    COPY reads from (required if there is a COPY); start_cmd/ready_cmd - (optional) command
    started with every sandbox, and a command that exits 0 once it is ready; allow_internet -
    (optional, default True) whether steps get NAT egress."""

    parent: str
    steps: Sequence[Step] = ()
    context: Path | None = None
    start_cmd: str | None = None
    ready_cmd: str | None = None
    step_timeout: float = 600.0
    allow_internet: bool = True  # build steps usually fetch packages
    # Who RUN steps run as until a USER step: None is root (Docker's rule); API builds start
    # as the parent template's user (E2B's rule).
    build_user: str | None = None
    cpu_count: int = 2  # each step sandbox's size: builds must not starve running sandboxes
    memory_mb: int = 2048

    def __post_init__(self) -> None:
        validate_name(self.parent)
        if any(s.kind == "COPY" for s in self.steps) and self.context is None:
            raise SpecError("COPY needs a context directory")
        if self.ready_cmd and not self.start_cmd:
            raise SpecError("a ready check needs a start command")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], context: Path | None = None) -> BuildSpec:
        """The JSON form: ``{"from": "base", "steps": [{"run": "..."}, {"copy": {"src": [..],
        "dest": "..."}}, {"env": {...}}, {"workdir": "..."}, {"user": "..."}], "start_cmd": ...,
        "ready_cmd": ...}``."""
        steps = []
        for i, raw in enumerate(data.get("steps", [])):
            if not isinstance(raw, Mapping) or len(raw) != 1:
                raise SpecError(f"steps[{i}]: expected one of run/copy/env/workdir/user")
            ((kind, value),) = raw.items()
            steps.append(_step_from_json(kind.upper(), value, f"steps[{i}]"))
        if "from" not in data:
            raise SpecError("build spec needs 'from' (a template name)")
        return cls(
            parent=str(data["from"]),
            steps=tuple(steps),
            context=context,
            start_cmd=data.get("start_cmd"),
            ready_cmd=data.get("ready_cmd"),
        )


def _step_from_json(kind: str, value: Any, where: str) -> Step:
    if kind == "RUN" and isinstance(value, str) and value.strip():
        return Step("RUN", run=value)
    if kind == "COPY" and isinstance(value, Mapping):
        src = value.get("src")
        sources = (src,) if isinstance(src, str) else tuple(src or ())
        if not sources or not value.get("dest"):
            raise SpecError(f"{where}: copy needs src and dest")
        return Step("COPY", sources=tuple(_check_source(s, where) for s in sources),
                    dest=str(value["dest"]), chown=value.get("chown"))  # fmt: skip
    if kind == "ENV" and isinstance(value, Mapping):
        return Step("ENV", env=tuple((str(k), str(v)) for k, v in value.items()))
    if kind in ("WORKDIR", "USER") and isinstance(value, str) and value:
        return Step(kind, dest=value)  # type: ignore[arg-type]
    raise SpecError(f"{where}: bad {kind.lower()} step {value!r}")


def _check_source(src: str, where: str) -> str:
    norm = posixpath.normpath(src)
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise SpecError(f"{where}: COPY source {src!r} must stay inside the context")
    return norm


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        lines.append((start, buf))
        buf = ""
    if buf:
        lines.append((start, buf))
    return lines


def _command(rest: str) -> str:
    """Shell form as is; exec form (JSON array) joined into a shell command."""
    if rest.startswith("["):
        try:
            argv = json.loads(rest)
        except json.JSONDecodeError as exc:
            raise SpecError(f"bad exec form {rest!r}: {exc}") from None
        return shlex.join(str(a) for a in argv)
    return rest


def _env_pairs(rest: str) -> tuple[tuple[str, str], ...]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:
        return ((words[0], rest.split(None, 1)[1].strip() if len(words) > 1 else ""),)
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise SpecError(f"ENV expects KEY=VALUE, got {word!r}")
        pairs.append((key, value))
    return tuple(pairs)


def parse_dockerfile(text: str, context: Path | None = None) -> BuildSpec:
    parent: str | None = None
    steps: list[Step] = []
    start_cmd: str | None = None
    ready_cmd: str | None = None
    for number, line in _logical_lines(text):
        word, _, rest = line.partition(" ")
        instr, rest = word.upper(), rest.strip()
        where = f"line {number}"
        if instr == "FROM":
            if parent is not None:
                raise SpecError(f"{where}: only one FROM is supported")
            parent = rest.split()[0] if rest else ""
            if ":" in parent or "/" in parent:
                raise SpecError(f"{where}: FROM must name an Emberbox template, not an image")
        elif parent is None:
            raise SpecError(f"{where}: {instr} before FROM")
        elif instr == "RUN":
            steps.append(Step("RUN", run=_command(rest)))
        elif instr == "COPY":
            words = shlex.split(rest)
            chown = None
            while words and words[0].startswith("--"):
                flag = words.pop(0)
                if flag.startswith("--chown="):
                    chown = flag.split("=", 1)[1]
                else:
                    raise SpecError(f"{where}: unsupported COPY flag {flag}")
            if len(words) < 2:
                raise SpecError(f"{where}: COPY needs a source and a destination")
            sources = tuple(_check_source(s, where) for s in words[:-1])
            steps.append(Step("COPY", sources=sources, dest=words[-1], chown=chown))
        elif instr == "ENV":
            steps.append(Step("ENV", env=_env_pairs(rest)))
        elif instr in ("WORKDIR", "USER"):
            if not rest:
                raise SpecError(f"{where}: {instr} needs a value")
            steps.append(Step(instr, dest=rest))  # type: ignore[arg-type]
        elif instr in ("CMD", "ENTRYPOINT"):
            start_cmd = _command(rest)
        elif instr == "HEALTHCHECK":
            opts = rest.split()
            if "CMD" not in opts:
                raise SpecError(f"{where}: HEALTHCHECK needs CMD <command>")
            ready_cmd = _command(rest.split("CMD", 1)[1].strip())
        elif instr in IGNORED:
            continue
        else:
            raise SpecError(f"{where}: unsupported instruction {instr}")
    if not parent:
        raise SpecError("Dockerfile needs FROM <template>")
    try:
        return BuildSpec(parent=parent, steps=tuple(steps), context=context,
                         start_cmd=start_cmd, ready_cmd=ready_cmd)  # fmt: skip
    except TemplateError as exc:
        raise SpecError(str(exc)) from None
