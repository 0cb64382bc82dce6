"""``emberbox secret create|update|list|info|delete``: the team's secrets, for header rules
(``emberbox sandbox create --header``). A value is read from stdin (or prompted for, hidden),
never from the command line, so it stays out of shell history and process lists."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..sdk._sync.secrets import Secret
from ..sdk.models import SecretInfo
from .output import JsonFlag, console, emit_json, fail, friendly_errors, pairs, table

app = typer.Typer(help="The team's secrets (values are write-only).", no_args_is_help=True)

Meta = Annotated[list[str] | None, typer.Option("--meta", help="KEY=VALUE metadata; repeat")]


def _value() -> str:
    if sys.stdin.isatty():
        return str(typer.prompt("value", hide_input=True))
    value = sys.stdin.read()
    return value[:-1] if value.endswith("\n") else value


def _meta(items: list[str] | None) -> dict[str, str] | None:
    """None without ``--meta``: an update then keeps the stored metadata."""
    return pairs(items, "--meta") if items is not None else None


def _show(info: SecretInfo, json_out: bool) -> None:
    if json_out:
        emit_json(info)
    else:
        console.print(f"{info.name} ({info.secret_id}) version {info.version}", highlight=False)


@app.command()
@friendly_errors
def create(name: str, meta: Meta = None, json_out: JsonFlag = False) -> None:
    """Create a secret (value from stdin); rules use it as '${e2b.secrets.NAME}'."""
    _show(Secret.create(name, _value(), _meta(meta)), json_out)


@app.command()
@friendly_errors
def update(secret: str, meta: Meta = None, json_out: JsonFlag = False) -> None:
    """Store a new value (from stdin); running sandboxes' rules get it at once."""
    _show(Secret.update(secret, _value(), _meta(meta)), json_out)


@app.command()
@friendly_errors
def info(secret: str, json_out: JsonFlag = False) -> None:
    """A secret's metadata (never its value)."""
    _show(Secret.get_info(secret), json_out)


@app.command("list")
@friendly_errors
def list_(json_out: JsonFlag = False) -> None:
    """The team's secrets, by name."""
    found = list(Secret.list())
    if json_out:
        emit_json(found)
        return
    rows = [(s.name, s.secret_id, s.version, s.updated_at) for s in found]
    table(f"{len(found)} secret(s)", ["name", "id", "version", "updated"], rows)


@app.command()
@friendly_errors
def delete(secret: str) -> None:
    """Delete a secret; rules that use it then refuse the requests they cover."""
    if not Secret.destroy(secret):
        raise fail(f"secret {secret} not found")
    console.print(f"deleted {secret}", highlight=False)
