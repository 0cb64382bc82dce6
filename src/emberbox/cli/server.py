"""``emberbox server`` and ``emberbox keys create|list|revoke``: the control plane's commands."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from .output import console, emit_json, fail, table

T = TypeVar("T")

keys_app = typer.Typer(help="Manage API keys (stored hashed; shown once).", no_args_is_help=True)


def serve(log_level: Annotated[str, typer.Option(help="log level")] = "info") -> None:
    """Run the API and the sandbox proxy with settings from EMBERBOX_* variables."""
    from ..host.instance_claim import InstanceTaken
    from ..node.offload import OffloadUnavailable
    from ..server.app import serve as run_server
    from ..server.config import Settings
    from ..server.instance_lock import AlreadyRunning
    from ..server.tls import TlsError

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a setting that cannot be read: named in the message
        raise fail(str(exc)) from None
    try:
        asyncio.run(run_server(settings))
    except (AlreadyRunning, InstanceTaken, TlsError, OffloadUnavailable) as exc:
        raise fail(str(exc)) from None


def _with_store(work: Callable[[Any], Awaitable[T]]) -> T:
    """Open the configured database (migrating it if needed) for one key operation."""
    from ..server.config import Settings
    from ..server.db.engine import make_engine, make_sessionmaker, migrate

    async def run() -> T:
        settings = Settings.from_env()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        try:
            await migrate(engine)
            return await work(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


@keys_app.command("create")
def keys_create(
    team: Annotated[str, typer.Option(help="team name (created if missing)")] = "default",
    name: Annotated[str, typer.Option(help="a label for the key")] = "",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a key and print it once."""
    from ..server.auth.store import create_key

    created = _with_store(lambda sessions: create_key(sessions, team, name))
    if json_out:
        emit_json({"key": created.key, "keyID": created.key_id, "teamID": created.team_id})
    else:
        console.print(created.key, highlight=False)


@keys_app.command("list")
def keys_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List keys (ids, teams, labels; never the secrets)."""
    from ..server.auth.store import list_keys

    keys = _with_store(list_keys)
    if json_out:
        emit_json(keys)
        return
    table(
        f"{len(keys)} key(s)",
        ["id", "team", "name", "prefix", "created", "revoked"],
        [(k.key_id, k.team, k.name, k.prefix + "…", k.created_at, k.revoked) for k in keys],
    )


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id; requests with it fail within a few seconds."""
    from ..server.auth.store import revoke_key

    if not _with_store(lambda sessions: revoke_key(sessions, key_id)):
        raise fail(f"no live key with id {key_id}")
    console.print(f"revoked {key_id}")
