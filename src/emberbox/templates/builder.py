"""Build a custom template: each RUN/COPY/WORKDIR step runs inside a sandbox of everything
below it, and its writable layer becomes the next read-only layer.

Every step has a key (parent key + step + the config it runs with + for COPY the hash of its
files); a key that exists in the store is reused without running anything. A failed step
raises :class:`StepFailed` with its output; its scratch directory is removed and no manifest
is written, so the template either appears complete or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import posixpath
import re
import secrets
import shlex
import shutil
from pathlib import Path
from typing import TextIO

from ..vocabulary import whole_number
from . import hashing
from ._run import StepFailed
from .spec import BuildSpec, SpecError, Step
from .step_output import StepOutput
from .steps import BootFailed, Mount, StepRunner
from .steps import Step as RunStep
from .store import (
    Template,
    TemplateConfig,
    TemplateError,
    TemplateStore,
    read_layer_file,
    validate_name,
)

CONTEXT_MOUNT = "/.emberbox-context"


@dataclasses.dataclass
class _State:
    layers: list[str]
    config: TemplateConfig
    key: str
    build_user: str = "root"  # as in Docker, RUN is root until a USER step says otherwise


def _lookup_user(store: TemplateStore, layers: list[str], name: str) -> tuple[int, int]:
    """uid/gid of ``name`` from the top-most layer that has /etc/passwd."""
    if (number := whole_number(name, 10)) is not None:
        return number, number
    for key in reversed(layers):
        passwd = read_layer_file(store.layer_path(key), "etc/passwd")  # (no link followed)
        if passwd.whiteout:
            break
        if passwd.text is not None:
            for line in passwd.text.splitlines():
                fields = line.split(":")
                if len(fields) > 3 and fields[0] == name:
                    uid, gid = whole_number(fields[2], 10), whole_number(fields[3], 10)
                    if uid is None or gid is None:
                        break
                    return uid, gid
            break
    raise SpecError(f"USER {name}: no such user in the template (create it with RUN useradd)")


def _context_source(context: Path, src: str) -> Path:
    path = (context / src).resolve()
    if not path.is_relative_to(context.resolve()):
        raise SpecError(f"COPY source {src!r} leaves the context")
    if not path.exists():
        raise SpecError(f"COPY source {src!r} does not exist in {context}")
    return path


UNPACK_DIR = "/.emberbox-unpack"
GLOB_CHARS = frozenset("*?[")
SAFE_GLOB = re.compile(r"^[A-Za-z0-9._/*?\[\]@+-]+$")  # expanded by bash, so nothing else


def _copy_script(step: Step, workdir: str) -> str:
    """Shell run as root inside the step's sandbox. Sources come from the context mount, or,
    for an uploaded archive, from the archive unpacked inside the sandbox (never on the host,
    so its symlinks cannot point the unpacking anywhere) and removed again."""
    dest = posixpath.join(workdir, step.dest)
    globbing = any(GLOB_CHARS & set(src) for src in step.sources)
    to_dir = step.dest.endswith("/") or len(step.sources) > 1 or globbing
    owner = shlex.quote(step.chown or "root:root")
    q_dest = shlex.quote(dest)
    lines = ["set -e", "shopt -s globstar dotglob nullglob"]
    root = shlex.quote(CONTEXT_MOUNT)
    if step.archive:
        archive = shlex.quote(posixpath.join(CONTEXT_MOUNT, step.archive))
        lines += [f"rm -rf {UNPACK_DIR} && mkdir -p {UNPACK_DIR}",
                  f"tar -xf {archive} -C {UNPACK_DIR} --no-same-owner",
                  f"trap 'rm -rf {UNPACK_DIR}' EXIT"]  # fmt: skip
        root = UNPACK_DIR
    lines.append("copy_one() {  # $1: source inside the sandbox")
    if to_dir:
        lines += [
            f'  if [ -d "$1" ]; then mkdir -p {q_dest} && cp -a "$1"/. {q_dest}/ && T={q_dest}',
            f'  else mkdir -p {q_dest} && cp -a "$1" {q_dest}/ && '
            f'T={q_dest}/"$(basename "$1")"; fi',
        ]
    else:
        lines += [
            f'  if [ -d "$1" ]; then mkdir -p {q_dest} && cp -a "$1"/. {q_dest}/',
            f'  else mkdir -p "$(dirname {q_dest})" && cp -a "$1" {q_dest}; fi',
            f"  T={q_dest}",
        ]
    lines.append(f'  chown -R {owner} "$T"')
    if step.mode:  # on the files copied (a directory's files, not its subdirectories)
        q_mode = shlex.quote(step.mode)
        lines.append(
            f'  if [ -d "$T" ]; then find "$T" -type f -exec chmod {q_mode} {{}} +; '
            f'else chmod {q_mode} "$T"; fi'
        )
    lines.append("}")
    for src in step.sources:
        if GLOB_CHARS & set(src):  # the pattern stays unquoted so bash expands it
            if not SAFE_GLOB.match(src):
                raise SpecError(f"COPY pattern {src!r} may use only [A-Za-z0-9._/*?[]@+-]")
            lines += [
                f'found=0; for S in {root}/{src}; do found=1; copy_one "$S"; done',
                f"[ $found = 1 ] || {{ echo 'COPY: nothing matches {src}' >&2; exit 1; }}",
            ]
        else:
            lines.append(f"copy_one {root}/{shlex.quote(src)}")
    return "\n".join(lines)


class TemplateBuilder:
    def __init__(self, store: TemplateStore, runner: StepRunner, log: TextIO | None = None) -> None:
        self.store = store
        self.runner = runner
        self.log = log

    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log.write(text + "\n")
            self.log.flush()

    async def build(self, name: str, spec: BuildSpec) -> Template:
        validate_name(name)
        parent = self.store.get(spec.parent)
        state = _State(list(parent.layers), parent.config, parent.id,
                       spec.build_user or "root")  # fmt: skip
        for number, step in enumerate(spec.steps, 1):
            label = f"[{number}/{len(spec.steps)}] {step.describe()}"
            await self._apply(state, step, spec, label)
        config = dataclasses.replace(
            state.config, start_cmd=spec.start_cmd, ready_cmd=spec.ready_cmd
        )
        template = Template(name=name, layers=tuple(state.layers), config=config,
                            parent=spec.parent)  # fmt: skip
        if spec.start_cmd and self._seen(template):
            self._say(f"verifying start command: {spec.start_cmd}: passed before, same template")
        elif spec.start_cmd:
            await self._verify_start(template, spec)
        self.store.save(template)
        return template

    async def _apply(self, state: _State, step: Step, spec: BuildSpec, label: str) -> None:
        cfg = state.config
        if step.kind == "ENV":
            state.config = dataclasses.replace(cfg, env={**cfg.env, **dict(step.env)})
            state.key = hashing.hash_json([state.key, step.describe()])
            self._say(label)
            return
        if step.kind == "USER":
            _lookup_user(self.store, state.layers, step.dest)
            state.config = dataclasses.replace(cfg, user=step.dest)
            state.build_user = step.dest
            state.key = hashing.hash_json([state.key, step.describe()])
            self._say(label)
            return
        user = (0, 0)
        binds: list[Mount] = []
        extra: object = None
        if step.kind == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(cfg.workdir, step.dest))
            state.config = dataclasses.replace(cfg, workdir=workdir)
            command, cwd = f"mkdir -p {shlex.quote(workdir)}", "/"
        elif step.kind == "COPY":
            assert spec.context is not None
            if step.archive:  # keyed by what it holds, not the hash it was uploaded as: the
                # layer store is every team's, and a client names its archive's hash itself
                archive = _context_source(spec.context, step.archive)
                extra = [await asyncio.to_thread(hashing.hash_file, archive), step.chown, step.mode]
            else:
                files = [_context_source(spec.context, s) for s in step.sources]
                extra = [hashing.hash_paths(files), step.mode]
            command, cwd = _copy_script(step, cfg.workdir), "/"
            binds.append(Mount(spec.context.resolve(), CONTEXT_MOUNT))
        else:
            command, cwd = step.run, cfg.workdir
            user = _lookup_user(self.store, state.layers, step.user or state.build_user)
        if step.force:  # a fresh key: this layer and every one above it are built again
            extra = [extra, secrets.token_hex(16)]
        key = hashing.hash_json([state.key, step.kind, command, cwd, user, dict(cfg.env), extra])
        if self.store.has_layer(key):
            self._say(f"{label} (cached)")
        else:
            self._say(label)
            await self._run_step(state, key, label, command, cwd, user, binds, spec, step.user)
        state.layers.append(key)
        state.key = key

    async def _run_step(
        self,
        state: _State,
        key: str,
        label: str,
        command: str,
        cwd: str,
        user: tuple[int, int],
        binds: list[Mount],
        spec: BuildSpec,
        step_user: str | None = None,
    ) -> None:
        scratch = self.store.scratch("step-")
        upper, log = scratch / "upper", scratch / "output.log"
        sandbox_id = f"build-{key[:8]}-{secrets.token_hex(3)}"
        current = Template(name=spec.parent, layers=tuple(state.layers), config=state.config)
        home = "/root" if user[0] == 0 else f"/home/{step_user or state.build_user}"
        output_of = StepOutput(log)
        bounding = asyncio.ensure_future(output_of.watch())
        try:
            try:
                code = await self.runner.run_step(
                    RunStep(sandbox_id=sandbox_id, template=current,
                            args=["/bin/bash", "-l", "-c", command], upper=upper, log=log,
                            env={**state.config.env, "HOME": home}, cwd=cwd, user=user,
                            mounts=binds, timeout=spec.step_timeout,
                            allow_internet=spec.allow_internet, cpu_count=spec.cpu_count,
                            memory_mb=spec.memory_mb)
                )  # fmt: skip
            finally:
                bounding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await bounding
            output = output_of.text()
            if output and self.log is not None:
                self.log.write(output if output.endswith("\n") else output + "\n")
            if code != 0:
                raise StepFailed(label, code, output)
            self.store.publish_layer(key, upper)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _seen(self, template: Template) -> bool:
        """Whether a saved template has exactly these layers and config: it passed the same
        start check when it was built (a template is saved only after passing it)."""
        for name in self.store.names():
            with contextlib.suppress(TemplateError, ValueError, KeyError):
                if self.store.get(name).id == template.id:
                    return True
        return False

    async def _verify_start(self, template: Template, spec: BuildSpec) -> None:
        """Boot the finished template once and wait for envd and the ready check, which is
        exactly what every later sandbox will wait for."""
        sandbox_id = f"verify-{secrets.token_hex(4)}"
        self._say(f"verifying start command: {template.config.start_cmd}")
        try:
            await self.runner.boot_check(sandbox_id, template, spec.allow_internet)
        except BootFailed as exc:
            raise StepFailed(f"start command {template.config.start_cmd!r}", 1, str(exc)) from None


async def build_template(
    store: TemplateStore,
    name: str,
    spec: BuildSpec,
    *,
    runner: StepRunner,
    log: TextIO | None = None,
) -> Template:
    return await TemplateBuilder(store, runner, log).build(name, spec)
