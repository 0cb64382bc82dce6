"""The ``emberbox`` command tree."""

from __future__ import annotations

import typer

from ..long_lived import freeze_at_exit
from . import logs, node, sandbox, secret, server, stateful, template

app = typer.Typer(
    help="Emberbox: self-hosted sandboxes for AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("server")(server.serve)
app.command("node")(node.node)
app.add_typer(server.keys_app, name="keys")
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(stateful.app, name="snapshot")
app.add_typer(secret.app, name="secret")
app.add_typer(template.app, name="template")
app.command("logs")(logs.logs)


def main() -> None:
    freeze_at_exit()
    app()
