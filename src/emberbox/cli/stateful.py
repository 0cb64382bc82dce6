"""``emberbox sandbox snapshot|fork|rollback|pause|resume`` and ``emberbox snapshot list|delete``.

Commands on a sandbox by id use a handle that does not ``connect`` (connecting resumes a paused
sandbox, which would hide the state the server answers about).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..sdk.exceptions import SandboxException
from ..sdk.models import SnapshotInfo
from ..sdk.sandbox import Sandbox
from .output import (
    JsonFlag,
    console,
    emit_json,
    errors,
    fail,
    friendly_errors,
    human_bytes,
    table,
)

app = typer.Typer(help="List and delete snapshots (start one with sandbox create -t ID).",
                  no_args_is_help=True)  # fmt: skip


def _handle(sandbox_id: str) -> Sandbox:
    return Sandbox._handle(sandbox_id)


@friendly_errors
def snapshot(
    sandbox_id: str,
    name: Annotated[str | None, typer.Option("--name", "-n", help="a name to create from")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Snapshot a running sandbox (it keeps running); prints the id and size on disk.

    The id (the name, when named) is a template: ``sandbox create -t ID``."""
    sandbox = _handle(sandbox_id)
    try:
        info = sandbox.create_snapshot(name=name)
    finally:
        sandbox.close()
    if json_out:
        emit_json(info)
    else:
        exact = f"  ({info.id})" if info.id and info.id != info.snapshot_id else ""
        console.print(f"{info.snapshot_id}{exact}  {human_bytes(info.size_bytes)}", highlight=False)


@friendly_errors
def fork(
    sandbox_id: str,
    count: Annotated[int, typer.Option("--count", "-n", help="how many forks (1-100)")] = 1,
    timeout: Annotated[int | None, typer.Option(help="seconds the forks live")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Start COUNT copies of a running sandbox; prints their ids, exits 1 if any failed.

    The source is checkpointed once and keeps running with its id and end time; a failed
    fork is one line on stderr."""
    sandbox = _handle(sandbox_id)
    try:
        results = sandbox.fork(count=count, timeout=timeout)
    finally:
        sandbox.close()
    failed = [r for r in results if isinstance(r, SandboxException)]
    for result in results:
        if not isinstance(result, SandboxException):
            result.close()
    if json_out:
        emit_json(
            [
                {"error": f"{type(r).__name__}: {r}"}
                if isinstance(r, SandboxException)
                else {"sandboxID": r.sandbox_id}
                for r in results
            ]
        )
    else:
        for result in results:
            if isinstance(result, SandboxException):
                errors.print(f"[bold red]fork failed:[/] {type(result).__name__}: {result}",
                             highlight=False)  # fmt: skip
            else:
                console.print(result.sandbox_id, highlight=False)
    if failed:
        raise typer.Exit(1)


@friendly_errors
def rollback(sandbox_id: str, snapshot_id: str) -> None:
    """Put a sandbox back to one of its own snapshots, in place (Emberbox's extension).

    Same id and address; the snapshot's memory, processes and files."""
    sandbox = _handle(sandbox_id)
    try:
        sandbox.rollback(snapshot_id)
    finally:
        sandbox.close()
    console.print(f"rolled {sandbox_id} back to {snapshot_id}", highlight=False)


@friendly_errors
def pause(
    sandbox_id: str,
    filesystem: Annotated[
        bool, typer.Option(help="keep only its files: its processes end, a resume boots it")
    ] = False,
) -> None:
    """Pause a sandbox: its memory and files go to disk, it holds no CPU or memory."""
    sandbox = _handle(sandbox_id)
    try:
        paused = sandbox.pause(mode="filesystem" if filesystem else "full")
    finally:
        sandbox.close()
    console.print(f"paused {sandbox_id}" if paused else f"{sandbox_id} was already paused",
                  highlight=False)  # fmt: skip


@friendly_errors
def resume(
    sandbox_id: str,
    timeout: Annotated[int | None, typer.Option(help="seconds to live from now")] = None,
    reboot: Annotated[
        bool, typer.Option(help="boot it afresh from its files instead of restoring memory")
    ] = False,
) -> None:
    """Resume a paused sandbox with its id, processes and files (a running one: no change);
    one paused with --filesystem, or resumed with --reboot, boots afresh from its files."""
    Sandbox.connect(
        sandbox_id, timeout=timeout, on_resume="reboot" if reboot else "restore"
    ).close()
    console.print(f"resumed {sandbox_id}", highlight=False)


@app.command("list")
@friendly_errors
def list_(
    sandbox_id: Annotated[
        str | None, typer.Option("--sandbox", "-s", help="only snapshots of this sandbox")
    ] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    json_out: JsonFlag = False,
) -> None:
    """List the team's snapshots, newest first, with the disk each takes."""
    found: list[SnapshotInfo] = list(Sandbox.list_snapshots(sandbox_id=sandbox_id, name=name))
    if json_out:
        emit_json(found)
        return
    total = sum(s.size_bytes or 0 for s in found)
    table(
        f"{len(found)} snapshot(s), {human_bytes(total)} on disk",
        ["id", "sandbox", "size", "created"],
        [(s.snapshot_id, s.sandbox_id, human_bytes(s.size_bytes), s.created_at) for s in found],
    )


@app.command()
@friendly_errors
def delete(snapshot_id: str) -> None:
    """Delete a snapshot (by id or name) and free its disk."""
    if not Sandbox.delete_snapshot(snapshot_id):
        raise fail(f"snapshot {snapshot_id} not found")
    console.print(f"deleted {snapshot_id}", highlight=False)
