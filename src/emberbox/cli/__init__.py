"""``emberbox``: the command line for people (typer + rich)."""

from .app import app, main

__all__ = ["app", "main"]
