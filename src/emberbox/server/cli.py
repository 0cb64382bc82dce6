"""``emberbox server`` and ``emberbox keys create``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .config import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emberbox", description="Emberbox control plane")
    sub = p.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("server", help="run the API and the sandbox proxy")
    srv.add_argument("--log-level", default="info")
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key and print it once")
    create.add_argument("--team", default="default", help="team name (created if missing)")
    create.add_argument("--name", default="", help="label for the key")
    return p


async def _create_key(settings: Settings, team: str, name: str) -> str:
    from .auth.store import create_key
    from .db.engine import make_engine, make_sessionmaker, migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    try:
        await migrate(engine)
        return (await create_key(make_sessionmaker(engine), team, name)).key
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings.from_env()
    if args.command == "keys":
        print(asyncio.run(_create_key(settings, args.team, args.name)))
        return 0
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .app import serve

    asyncio.run(serve(settings))
    return 0
