"""The SDK's step list (``TemplateBuildStartV2.steps``) as our builder's :class:`BuildSpec`.

Each step is ``{type, args, filesHash?, force?}``; the shapes come from the SDK's builder
(``RUN [cmd, user?]``, ``COPY [src, dest, user, mode]``, ``ENV [k, v, ...]``, ``WORKDIR [path]``,
``USER [name]``). Anything else is refused with the step's number, never skipped. The control
plane checks a list before it asks a node to build it; the node converts it again (its
messages may come from any client).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .builder import GLOB_CHARS, SAFE_GLOB
from .spec import BuildSpec, Step

MODE_RE = re.compile(r"^0?[0-7]{3,4}$")


class InvalidStep(ValueError):
    """A step the builder cannot run; the message names the step."""


def _args(raw: Mapping[str, Any], where: str) -> list[str]:
    args = raw.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise InvalidStep(f"{where}: args must be a list of strings")
    return args


def to_step(raw: Mapping[str, Any], number: int, user: str, force_all: bool) -> Step:
    """``user`` is who the build runs as at this point (COPY's default owner)."""
    where = f"step {number}"
    kind = str(raw.get("type", "")).upper()
    args = _args(raw, where)
    force = bool(raw.get("force")) or force_all
    if kind == "RUN":
        if not args or not args[0].strip():
            raise InvalidStep(f"{where}: RUN needs a command")
        return Step("RUN", run=args[0], user=(args[1] or None) if len(args) > 1 else None,
                    force=force)  # fmt: skip
    if kind == "COPY":
        if len(args) < 2 or not args[0] or not args[1]:
            raise InvalidStep(f"{where}: COPY needs a source and a destination")
        files_hash = raw.get("filesHash")
        if not isinstance(files_hash, str) or not files_hash:
            raise InvalidStep(f"{where}: COPY needs filesHash (upload its files first)")
        src, dest = args[0], args[1]
        owner = args[2] if len(args) > 2 and args[2] else user
        mode = args[3] if len(args) > 3 and args[3] else None
        if mode is not None and not MODE_RE.match(mode):
            raise InvalidStep(f"{where}: COPY mode {mode!r} is not an octal mode")
        if GLOB_CHARS & set(src) and not SAFE_GLOB.match(src):
            raise InvalidStep(f"{where}: COPY pattern {src!r} may use only [A-Za-z0-9._/*?[]@+-]")
        if src.startswith("/") or src == ".." or src.startswith("../"):
            raise InvalidStep(f"{where}: COPY source {src!r} must stay inside the context")
        return Step("COPY", sources=(src,), dest=dest, chown=f"{owner}:", mode=mode,
                    archive=f"{files_hash}.tar", force=force)  # fmt: skip
    if kind == "ENV":
        if not args or len(args) % 2:
            raise InvalidStep(f"{where}: ENV needs key/value pairs")
        pairs = tuple((args[i], args[i + 1]) for i in range(0, len(args), 2))
        return Step("ENV", env=pairs, force=force)
    if kind in ("WORKDIR", "USER"):
        if len(args) != 1 or not args[0]:
            raise InvalidStep(f"{where}: {kind} needs exactly one value")
        return Step(kind, dest=args[0], force=force)  # type: ignore[arg-type]
    raise InvalidStep(f"{where}: step type {kind or '(none)'!r} is not supported")


def check_steps(steps: object) -> None:
    """Refuse a malformed step list before anything else is looked up."""
    if not isinstance(steps, list):
        raise InvalidStep("steps must be a list")
    for number, raw in enumerate(steps, 1):
        if not isinstance(raw, Mapping):
            raise InvalidStep(f"step {number}: expected an object")
        to_step(raw, number, "root", False)


def to_spec(
    parent: str,
    parent_user: str,
    steps: Sequence[Mapping[str, Any]],
    *,
    context: Path,
    force: bool,
    start_cmd: str | None,
    ready_cmd: str | None,
    cpu_count: int,
    memory_mb: int,
) -> BuildSpec:
    """The spec our builder runs; steps start as ``parent_user`` (the parent's default user)."""
    out: list[Step] = []
    user = parent_user
    for number, raw in enumerate(steps, 1):
        if not isinstance(raw, Mapping):
            raise InvalidStep(f"step {number}: expected an object")
        step = to_step(raw, number, user, force)
        if step.kind == "USER":
            user = step.dest
        out.append(step)
    if ready_cmd and not start_cmd:
        # E2B runs a ready check without a start command too: the check alone gates readiness.
        start_cmd = "true"
    return BuildSpec(parent=parent, steps=tuple(out), context=context, start_cmd=start_cmd,
                     ready_cmd=ready_cmd, build_user=parent_user, cpu_count=cpu_count,
                     memory_mb=memory_mb)  # fmt: skip
