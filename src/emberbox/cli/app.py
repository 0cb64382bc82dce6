"""The ``emberbox`` command tree."""

from __future__ import annotations

import typer

from . import sandbox

app = typer.Typer(
    help="Emberbox: self-hosted sandboxes for AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(sandbox.app, name="sandbox")


def main() -> None:
    app()
