"""``emberbox logs <sandbox>``: what happened in a sandbox, optionally followed."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from ..sdk.sandbox import Sandbox
from .output import console, friendly_errors


def _print(entries: list[dict[str, Any]], json_out: bool) -> None:
    for entry in entries:
        if json_out:  # JSON Lines: one object per line, so --follow can be piped
            sys.stdout.write(json.dumps(entry) + "\n")
            sys.stdout.flush()
        else:
            level = entry["level"]
            style = {"error": "red", "warn": "yellow"}.get(level, "dim")
            console.print(
                f"[{style}]{entry['timestamp']} {level:<5}[/] {entry['message']}", highlight=False
            )


@friendly_errors
def logs(
    sandbox_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new entries")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a sandbox's lifecycle events and the processes it ran."""
    sandbox = Sandbox.connect(sandbox_id)
    entries = sandbox.get_logs()
    _print(entries, json_out)
    cursor = max((int(e["fields"].get("seq", 0)) for e in entries), default=0)
    while follow:
        time.sleep(1.0)
        fresh = [e for e in sandbox.get_logs(cursor) if "seq" in e["fields"]]
        _print(fresh, json_out)
        cursor = max((int(e["fields"]["seq"]) for e in fresh), default=cursor)
