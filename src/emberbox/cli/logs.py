"""``emberbox logs <sandbox>``: what happened in a sandbox, optionally followed."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..sdk.models import EgressRecord
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


def _print_egress(records: list[EgressRecord], json_out: bool) -> None:
    for r in records:
        if json_out:
            sys.stdout.write(json.dumps(asdict(r), default=datetime.isoformat) + "\n")
            sys.stdout.flush()
            continue
        style = "red" if r.verdict == "denied" else "green"
        where = f"{r.name} " if r.name else ""
        where += f"{r.ip}:{r.port}" if r.ip else f":{r.port}"
        request = f" {r.method} {r.path}" if r.method else ""
        where, request = escape(where), escape(request)  # the sandbox chose them
        sizes = "" if r.bytes_out is None else f" out {r.bytes_out} B, in {r.bytes_in} B"
        console.print(
            f"[dim]{r.timestamp.isoformat()}[/] [{style}]{r.verdict:<7}[/] {r.protocol:<5} "
            f"{where}{request}{sizes} [dim]({r.rule})[/]",
            highlight=False,
            soft_wrap=True,  # one line per record, whatever the terminal's width
        )


def _egress(sandbox: Sandbox, follow: bool, json_out: bool) -> None:
    """Every record, then (``follow``) the ones that come after, by the last page's token."""
    seen = 0
    while True:
        for record in sandbox.egress_log(limit=1000, next_token=str(seen) if seen else None):
            _print_egress([record], json_out)
            seen = record.seq
        if not follow:
            return
        time.sleep(1.0)


@friendly_errors
def logs(
    sandbox_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new entries")
    ] = False,
    egress: Annotated[
        bool,
        typer.Option("--egress", help="the connections it opened to the outside (audit log)"),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a sandbox's lifecycle events and the processes it ran (--egress: its egress
    audit log)."""
    sandbox = Sandbox._handle(sandbox_id)  # (a connect would resume a paused sandbox)
    if egress:
        _egress(sandbox, follow, json_out)
        return
    entries = sandbox.get_logs()
    _print(entries, json_out)
    since, printed = _cursor(entries, 0, set())
    while follow:
        time.sleep(1.0)
        # From the newest printed entry's millisecond on (inclusive), less those of that
        # millisecond already printed (by seq: envd's count starts again after a reboot).
        fresh = [
            e
            for e in sandbox.get_logs(since)
            if "seq" in e["fields"] and (_ms(e), e["fields"]["seq"]) not in printed
        ]
        _print(fresh, json_out)
        since, printed = _cursor(fresh, since, printed)


def _ms(entry: dict[str, Any]) -> int:
    at = datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00"))
    return int(at.timestamp() * 1000)


def _cursor(
    entries: list[dict[str, Any]], since: int, printed: set[tuple[int, str]]
) -> tuple[int, set[tuple[int, str]]]:
    """Where a follow goes on: the newest journal entry's millisecond, and the entries of
    that millisecond printed so far."""
    journal = [e for e in entries if "seq" in e["fields"]]
    if not journal:
        return since, printed
    newest = max(_ms(e) for e in journal)
    kept = {p for p in printed if p[0] == newest}
    return newest, kept | {(newest, e["fields"]["seq"]) for e in journal if _ms(e) == newest}
