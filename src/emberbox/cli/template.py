"""``emberbox template build|list|delete``: templates on this node (run where the server runs).

Builds run each step inside a sandbox of the parent template; the progress bar advances per
step and each step's output is printed as it arrives from the builder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .output import console, emit_json, fail, table

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


@app.command()
def build(
    name: str,
    file: Annotated[Path, typer.Option("--file", "-f", help="Dockerfile-style spec")],
    context: Annotated[Path | None, typer.Option(help="directory COPY reads from")] = None,
) -> None:
    """Build NAME from a spec whose FROM names one of our templates (RUN, COPY, ENV, WORKDIR,
    USER, CMD/ready check)."""
    from ..runtimes.gvisor import GVisorConfig, GVisorRuntime
    from ..server.config import Settings
    from ..templates.builder import build_template
    from ..templates.spec import parse_dockerfile
    from ..templates.store import TemplateError, TemplateStore

    if not file.is_file():
        raise fail(f"no such file: {file}")
    settings = Settings.from_env()
    store = TemplateStore(settings.data_dir)
    config = GVisorConfig(data_dir=settings.data_dir)
    if settings.runsc:
        config = dataclasses.replace(config, runsc=settings.runsc)
    runner = GVisorRuntime(config, store)
    try:
        spec = parse_dockerfile(file.read_text(), context or file.parent)
    except TemplateError as exc:
        raise fail(str(exc)) from None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True) as progress:
        sink = _ProgressLog(progress)
        try:
            template = asyncio.run(build_template(store, name, spec, runner=runner, log=sink))  # type: ignore[arg-type]
        except TemplateError as exc:
            raise fail(str(exc).splitlines()[0]) from None
        progress.update(sink.task, completed=progress.tasks[0].total or 0)
    console.print(
        f"built [bold]{template.name}[/] ({template.id[:12]}, {len(template.layers)} layers)"
    )


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
