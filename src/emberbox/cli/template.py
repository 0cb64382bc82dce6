"""``emberbox template build|list|delete``.

``build`` is a client of the template API (``E2B_API_URL``/``EMBERBOX_API_URL`` and the API key,
like every other command): the server builds in gVisor sandboxes and the progress bar follows
its log. ``build --local`` builds on this node without a server (offline; run where the node
runs), as ``list`` and ``delete`` act on this node's store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .output import console, emit_json, fail, table

if TYPE_CHECKING:
    from ..templates.spec import BuildSpec

app = typer.Typer(help="Build, list and delete templates on this node.", no_args_is_help=True)

_STEP = re.compile(r"^\[(\d+)/(\d+)\] (.*)$")


class _ProgressLog:
    """A text sink for the builder: step labels move the bar, everything else is step output."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("build", total=None)
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            match = _STEP.match(line)
            if match:
                done, total, what = int(match[1]), int(match[2]), match[3]
                self.progress.update(self.task, total=total, completed=done - 1, description=what)
                self.progress.console.print(f"[bold cyan]{line}[/]", highlight=False)
            else:
                self.progress.console.print(line, highlight=False, markup=False)
        return len(text)

    def flush(self) -> None:
        pass

    def line(self, text: str) -> None:
        self.write(text + "\n")


@app.command()
def build(
    name: str,
    file: Annotated[Path, typer.Option("--file", "-f", help="Dockerfile-style spec")],
    context: Annotated[Path | None, typer.Option(help="directory COPY reads from")] = None,
    local: Annotated[bool, typer.Option("--local", help="build on this node, no server")] = False,
    cpu_count: Annotated[int | None, typer.Option("--cpu", help="vCPUs of its sandboxes")] = None,
    memory_mb: Annotated[int | None, typer.Option("--memory-mb")] = None,
) -> None:
    """Build NAME (``name:tag`` tags it) from a spec whose FROM names one of our templates (RUN,
    COPY, ENV, WORKDIR, USER, CMD/ready check)."""
    from ..templates.spec import parse_dockerfile
    from ..templates.store import TemplateError

    if not file.is_file():
        raise fail(f"no such file: {file}")
    try:
        spec = parse_dockerfile(file.read_text(), context or file.parent)
    except TemplateError as exc:
        raise fail(str(exc)) from None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True) as progress:
        sink = _ProgressLog(progress)
        if local:
            what = _build_here(name, spec, sink)
        else:
            what = _build_through_api(name, spec, sink, cpu_count, memory_mb)
        progress.update(sink.task, completed=progress.tasks[0].total or 0)
    console.print(f"built [bold]{name}[/] ({what})")


def _build_through_api(
    name: str, spec: BuildSpec, sink: _ProgressLog, cpu: int | None, memory: int | None
) -> str:
    from ..sdk._config import ConnectionConfig
    from ..sdk._sync.api import Api, http_client
    from ..sdk._sync.templates import build_template
    from ..sdk.exceptions import SandboxException
    from .template_wire import build_body

    body, files = build_body(spec)
    try:
        with http_client() as http:
            done = build_template(Api(ConnectionConfig.create(), http), name, body, files,
                                  on_log=lambda e: sink.line(e.message),
                                  cpu_count=cpu, memory_mb=memory)  # fmt: skip
    except SandboxException as exc:
        raise fail(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    return f"template {done.template_id}, build {done.build_id}"


def _build_here(name: str, spec: BuildSpec, sink: _ProgressLog) -> str:
    from ..host.instance_claim import InstanceTaken
    from ..runtimes.gvisor import GVisorConfig, GVisorRuntime
    from ..server.config import Settings
    from ..templates.builder import build_template
    from ..templates.store import TemplateError, TemplateStore

    settings = Settings.from_env()
    store = TemplateStore(settings.data_dir)
    config = GVisorConfig(data_dir=settings.data_dir, egress_audit=False)
    if settings.runsc:
        config = dataclasses.replace(config, runsc=settings.runsc)
    try:
        runner = GVisorRuntime(config, store)
    except InstanceTaken as exc:
        raise fail(str(exc)) from None
    try:
        template = asyncio.run(build_template(store, name, spec, runner=runner, log=sink))  # type: ignore[arg-type]
    except TemplateError as exc:
        raise fail(str(exc).splitlines()[0]) from None
    return f"{template.id[:12]}, {len(template.layers)} layers, on this node"


@app.command("list")
def list_(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Templates on this node."""
    from ..templates.store import TemplateStore

    store = TemplateStore(None)
    templates = [store.get(name) for name in store.names()]
    if json_out:
        emit_json([{"name": t.name, "id": t.id, "layers": len(t.layers)} for t in templates])
        return
    table(f"{len(templates)} template(s)", ["name", "id", "layers", "parent"],
          [(t.name, t.id[:12], len(t.layers), t.parent or "") for t in templates])  # fmt: skip


@app.command()
def delete(name: str) -> None:
    """Forget a template (its layers stay until no template uses them)."""
    from ..templates.store import TemplateError, TemplateStore

    try:
        TemplateStore(None).delete(name)
    except TemplateError as exc:
        raise fail(str(exc)) from None
    console.print(f"deleted {name}")
