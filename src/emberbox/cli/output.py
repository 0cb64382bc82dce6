"""Human output by default, ``--json`` for scripts; errors are one line and a non-zero exit."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import wraps
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..sdk.exceptions import SandboxException

console = Console()
errors = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(_plain(value), indent=2, default=str) + "\n")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    grid = Table(title=title, title_justify="left")
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    console.print(grid)


def human_bytes(size: int | None) -> str:
    """``1.5 GiB``-style sizes for tables; unknown sizes print as ``?``."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line (never wrapped, and the message's brackets are not markup: it may
    come from a server) and the exit to raise."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def friendly_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn SDK exceptions into one clear line and exit code 1 (no traceback)."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SandboxException as exc:
            raise fail(f"{type(exc).__name__}: {exc}") from None

    return wrapper


JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def pairs(values: list[str] | None, what: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict; a malformed one fails naming the option ``what``."""
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"{what} must look like KEY=VALUE, got {item!r}")
        out[key] = value
    return out
