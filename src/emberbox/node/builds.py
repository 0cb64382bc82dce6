"""Template builds on the node, where the template store and the build sandboxes are.

The control plane owns a build's record, tags and stored log; the node owns running it: a queue
(at most ``max_concurrent`` run at once, each step in a sandbox of ``cpu_count`` vCPUs, at most
``max_queued`` wait, so builds cannot starve running sandboxes), the files COPY steps read, and
the log lines until the control plane has fetched them. A build moves ``waiting`` →
``building`` → ``ready`` | ``error``; only a ready build has a manifest in the store (the
builder writes it last), so a failed build leaves no template behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..templates._run import StepFailed
from ..templates.builder import TemplateBuilder
from ..templates.oci import Credentials, import_image
from ..templates.sdk_steps import check_steps, to_spec
from ..templates.spec import BuildSpec
from ..templates.steps import StepRunner
from ..templates.store import TemplateError, TemplateNotFound, TemplateStore, validate_name

log = logging.getLogger("emberbox.node.builds")

FILES_DIR = "template-files"  # under the data dir: <template id>/<files hash>.tar
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
SCOPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # a control plane's template id
STEP_LABEL = re.compile(r"^\[(\d+)/(\d+)\] ")
BASE_STEP, FINALIZE_STEP = "base", "finalize"  # the SDK's names for before/after the steps
FORGET_AFTER_S = 600.0  # how long a finished build's record and log are kept
BUILD_PREFIX = "b-"  # what a build's store name starts with: all a build may write or delete
STOPPED = "the build was stopped"


@dataclass(frozen=True)
class BuildSettings:
    """``EMBERBOX_MAX_CONCURRENT_BUILDS`` (1), ``EMBERBOX_MAX_QUEUED_BUILDS`` (8),
    ``EMBERBOX_BUILD_CPUS`` (1: each step sandbox's vCPUs) and
    ``EMBERBOX_INSECURE_REGISTRIES`` (``host[:port]``s this node pulls from over plain HTTP)."""

    max_concurrent: int = 1
    max_queued: int = 8
    cpu_count: int = 1
    insecure_registries: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BuildSettings:
        def whole(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            if not raw.isdigit() or int(raw) < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, not {raw!r}")
            return int(raw)

        return cls(
            max_concurrent=whole("EMBERBOX_MAX_CONCURRENT_BUILDS", cls.max_concurrent),
            max_queued=whole("EMBERBOX_MAX_QUEUED_BUILDS", cls.max_queued),
            cpu_count=whole("EMBERBOX_BUILD_CPUS", cls.cpu_count),
            insecure_registries=tuple(
                h for h in env.get("EMBERBOX_INSECURE_REGISTRIES", "").split(",") if h
            ),
        )


class BuildRefused(ValueError):
    """The request cannot be built as given (bad name, bad step, unknown file)."""


class BuildParentMissing(LookupError):
    """The template a build starts from is not on this node."""


class BuildQueueFull(Exception):
    """Too many builds wait or run; retrying later helps."""


class BuildUnknown(LookupError):
    """No build of that id is known here (never started, or forgotten)."""


@dataclass(frozen=True)
class Line:
    seq: int
    at: float
    level: str
    message: str
    step: str


@dataclass(frozen=True)
class BuildOrder:
    """What to build, as the node RPC ``StartBuild`` carries it."""

    build_id: str
    scope: str  # whose uploaded files COPY steps read
    store_name: str
    label: str
    steps: Sequence[Mapping[str, object]]  # the SDK's shape: {type, args, filesHash, force}
    from_template: str = ""
    from_image: str = ""
    creds: Credentials | None = None
    start_cmd: str = ""
    ready_cmd: str = ""
    force: bool = False
    memory_mb: int = 1024


@dataclass
class Build:
    """One build's state and its log lines not yet forgotten."""

    order: BuildOrder
    status: str = "waiting"
    reason: str = ""
    reason_step: str = ""
    lines: list[Line] = field(default_factory=list)
    step: str = BASE_STEP
    finished: float = 0.0
    _buffer: str = ""

    def add(self, message: str, level: str = "info", step: str | None = None) -> None:
        self.lines.append(Line(len(self.lines), time.time(), level, message, step or self.step))

    # TextIO face for the builder: step labels "[n/N] ..." move the current step.
    def write(self, text: str) -> int:
        self._buffer += text
        *complete, self._buffer = self._buffer.split("\n")
        for line in complete:
            match = STEP_LABEL.match(line)
            if match:
                self.step = match[1]
            elif line.startswith("verifying start command"):
                self.step = FINALIZE_STEP
            self.add(line)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            self.add(self._buffer)
            self._buffer = ""

    def end(self, status: str, reason: str = "") -> None:
        self.flush()
        self.status, self.reason, self.finished = status, reason, time.time()
        if reason:
            self.reason_step = self.step


class BuildFiles:
    """COPY steps' archives, per control-plane template id and the SDK's content hash."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def context_dir(self, scope: str) -> Path:
        if not SCOPE_RE.match(scope):
            raise BuildRefused(f"invalid template id {scope!r}")
        return self.root / scope

    def path(self, scope: str, files_hash: str) -> Path:
        if not HASH_RE.match(files_hash):
            raise BuildRefused("a files hash is 64 lowercase hex digits (sha256)")
        return self.context_dir(scope) / f"{files_hash}.tar"

    def missing(self, scope: str, hashes: Sequence[str]) -> list[str]:
        return [h for h in dict.fromkeys(hashes) if not self.path(scope, h).is_file()]

    def _part(self, scope: str, files_hash: str) -> Path:
        return self.context_dir(scope) / f".{files_hash}.put"

    def put(self, scope: str, files_hash: str, offset: int, data: bytes, last: bool) -> None:
        """Chunks are written in order by one sender; the file appears whole, by rename."""
        target = self.path(scope, files_hash)
        part = self._part(scope, files_hash)
        part.parent.mkdir(parents=True, exist_ok=True)
        if offset == 0:
            part.unlink(missing_ok=True)
        size = part.stat().st_size if part.exists() else 0
        if offset != size:
            raise BuildRefused(f"chunk at {offset} but {size} bytes of {files_hash} arrived")
        with part.open("ab") as f:
            f.write(data)
        if last:
            os.replace(part, target)

    def drop(self, scope: str) -> None:
        shutil.rmtree(self.context_dir(scope), ignore_errors=True)

    def sweep_partial(self) -> None:
        """Half-sent files a previous node process left behind."""
        for part in self.root.glob("*/.*.put"):
            part.unlink(missing_ok=True)


class NodeBuilds:
    """Runs builds with ``runner`` (the node's runtime) into ``store``."""

    @classmethod
    def for_runtime(
        cls, data_dir: Path, runtime: object, settings: BuildSettings
    ) -> NodeBuilds | None:
        """None when the runtime cannot run build steps (the node then refuses builds)."""
        return cls(data_dir, runtime, settings) if isinstance(runtime, StepRunner) else None

    def __init__(self, data_dir: Path, runner: StepRunner, settings: BuildSettings) -> None:
        self.store = TemplateStore(data_dir)
        self.files = BuildFiles(data_dir / FILES_DIR)
        self.runner = runner
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._builds: dict[str, Build] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        self.files.sweep_partial()

    def submit(self, order: BuildOrder) -> None:
        """Queue ``order`` after checking what can be checked now; errors leave nothing."""
        if order.build_id in self._builds:
            return  # a retried start: the build is already known
        if len(self._tasks) >= self.settings.max_queued:
            raise BuildQueueFull(
                f"{len(self._tasks)} builds are queued or running; wait for one to finish"
            )
        _check_build_name(order.store_name)
        if order.store_name in self.store.names():
            raise BuildRefused(f"{order.store_name} exists already; a build makes a new one")
        if bool(order.from_template) == bool(order.from_image):
            raise BuildRefused("give exactly one of from_template and from_image")
        if order.from_template:
            try:
                self.store.get(order.from_template)
            except TemplateNotFound:
                raise BuildParentMissing(
                    f"template '{order.from_template}' is not on this node"
                ) from None
        check_steps(list(order.steps))  # a bad step is refused before anything runs
        hashes = [str(s.get("filesHash")) for s in order.steps if s.get("filesHash")]
        missing = self.files.missing(order.scope, hashes)
        if missing:
            raise BuildRefused(f"files {', '.join(missing)} are not on this node")
        build = Build(order)
        self._builds[order.build_id] = build
        task = asyncio.create_task(self._run(build), name=f"build-{order.build_id}")
        self._tasks[order.build_id] = task
        task.add_done_callback(lambda _t: self._done(build))
        self._forget_old()

    def _done(self, build: Build) -> None:
        self._tasks.pop(build.order.build_id, None)
        if not build.finished:  # cancelled before it began
            self._stopped(build)

    def status(self, build_id: str) -> Build:
        self._forget_old()
        build = self._builds.get(build_id)
        if build is None:
            raise BuildUnknown(f"build {build_id} is not known on this node")
        return build

    def cancel(self, build_id: str) -> None:
        """Stop it; one that had just finished is undone (its caller will not use it)."""
        task = self._tasks.get(build_id)
        if task is not None:
            task.cancel()
            return
        build = self._builds.get(build_id)
        if build is not None and build.status == "ready":
            self._stopped(build)

    def delete(self, scope: str, store_names: Sequence[str]) -> None:
        names = [_check_build_name(n) for n in store_names]
        self.files.context_dir(scope)  # checks the id before anything is removed
        for name in names:
            self.store.delete(name)
        self.files.drop(scope)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget_old(self) -> None:
        cutoff = time.time() - FORGET_AFTER_S
        for build_id, b in list(self._builds.items()):
            if b.finished and b.finished < cutoff:
                del self._builds[build_id]

    async def _run(self, build: Build) -> None:
        order = build.order
        build.add(f"Build {order.build_id} of {order.label} is queued")
        try:
            async with self._slots:
                build.status = "building"
                started = time.monotonic()
                build.add(f"Building {order.label}")
                try:
                    await TemplateBuilder(self.store, self.runner, build).build(  # type: ignore[arg-type]
                        order.store_name, await self._spec(build)
                    )
                except (TemplateError, StepFailed, ValueError) as exc:
                    self._fail(build, exc)
                    return
                except Exception as exc:  # a bug or a host failure: still a failed build
                    log.exception("build %s crashed", order.build_id)
                    self._fail(build, exc)
                    return
                build.step = FINALIZE_STEP
                build.add(f"Build finished in {time.monotonic() - started:.1f} s")
                build.end("ready")
        except asyncio.CancelledError:
            self._stopped(build)
            raise

    async def _spec(self, build: Build) -> BuildSpec:
        """The builder's spec, once the parent exists (an image may need pulling first)."""
        order = build.order
        if order.from_image:
            build.add(f"FROM {order.from_image}")
            tpl = await import_image(self.store, order.from_image, self.store.get("base"),
                                     creds=order.creds,
                                     insecure=self.settings.insecure_registries,
                                     say=build.add)  # fmt: skip
            parent, user = tpl.name, tpl.config.user
        else:
            parent, user = order.from_template, self.store.get(order.from_template).config.user
        return to_spec(
            parent, user, order.steps, context=self.files.context_dir(order.scope),
            force=order.force, start_cmd=order.start_cmd or None,
            ready_cmd=order.ready_cmd or None, cpu_count=self.settings.cpu_count,
            memory_mb=order.memory_mb,
        )  # fmt: skip

    def _stopped(self, build: Build) -> None:
        """Ends a build as stopped; whatever it wrote to the store goes."""
        self.store.delete(build.order.store_name)
        build.add(STOPPED, level="error")
        build.end("error", STOPPED)

    def _fail(self, build: Build, exc: BaseException) -> None:
        if isinstance(exc, StepFailed):
            tail = exc.output.strip().splitlines()[-20:]
            reason = f"{exc.step} failed with exit code {exc.code}" + (
                ":\n" + "\n".join(tail) if tail else ""
            )
        else:
            reason = str(exc) or type(exc).__name__
        build.add(f"Build failed: {reason}", level="error")
        self.store.delete(build.order.store_name)  # never written on failure; be sure
        build.end("error", reason)


def _check_build_name(name: str) -> str:
    """Node messages may come from any client: a build writes and deletes only build outputs,
    never ``base`` or an image's template."""
    try:
        validate_name(name)
    except TemplateError as exc:
        raise BuildRefused(str(exc)) from None
    if not name.startswith(BUILD_PREFIX):
        raise BuildRefused(f"{name!r} is not a build's name (they start with {BUILD_PREFIX!r})")
    return name
