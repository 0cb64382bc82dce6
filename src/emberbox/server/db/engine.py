"""Engine creation and schema migration on start.

Migrations run through Alembic's API on a live connection, with the script directory inside the
installed package, so a wheel install needs no alembic.ini and no source checkout.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The PostgreSQL advisory lock held while migrating: an arbitrary key, the same in every
# server on the database.
_MIGRATION_LOCK = 7_131_955_022


def make_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, foreign keys and a busy timeout so readers never block."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent): all of it, or none of it."""

    def upgrade(connection: Connection) -> None:
        command.upgrade(_alembic_config(connection), "head")

    if engine.dialect.name != "sqlite":
        async with engine.connect() as conn:
            # Servers starting at once on one database: one migrates, the others wait for
            # it (the lock is let go at its commit) and then find nothing to do. Read
            # committed whatever the database's default: a snapshot taken as the lock was
            # asked for would not show the migration the wait was for.
            await conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
                if not await conn.run_sync(_at_head):
                    await conn.run_sync(upgrade)
        return
    async with engine.connect() as conn:
        if await conn.run_sync(_at_head):
            return
        # A batch migration recreates a SQLite table (copy, drop, rename): with foreign keys
        # enforced, the drop deletes every row that references it (ON DELETE CASCADE), so they
        # are off while it runs (SQLite ignores the switch inside a transaction: set before
        # one), and a migration that leaves rows pointing nowhere is refused.
        await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        await conn.commit()
        try:
            async with conn.begin():
                # (sqlite3 begins a transaction only before a row is written: the DDL before
                # that was committed at once, and a migration that failed left half a schema;
                # IMMEDIATE: another process migrating meanwhile waits, then finds it done)
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
                if not await conn.run_sync(_at_head):
                    before = await _broken_references(conn)
                    await conn.run_sync(upgrade)
                    if broken := await _broken_references(conn) - before:
                        raise RuntimeError(f"migration left rows pointing nowhere: {broken}")
        finally:
            await _enforce_foreign_keys_again(conn)


async def _enforce_foreign_keys_again(conn: AsyncConnection) -> None:
    """Back on, read back (SQLite ignores the switch inside a transaction, silently); a
    connection that cannot say they are is dropped, never handed out without them (the next
    checkout sets one up afresh)."""
    try:
        await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        await conn.commit()
        enforced = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one() == 1
    except Exception:  # (dealt with by dropping it)
        enforced = False
    except BaseException:  # cancelled: dropped, and still cancelled
        await conn.invalidate()
        raise
    if not enforced:
        await conn.invalidate()


def _at_head(connection: Connection) -> bool:
    """Whether the schema is at the newest revision already."""
    current = MigrationContext.configure(connection).get_current_heads()
    newest = ScriptDirectory.from_config(_alembic_config(connection)).get_heads()
    return set(current) == set(newest)


async def _broken_references(conn: AsyncConnection) -> Counter[tuple[str, str]]:
    """SQLite's rows whose foreign key names no row, counted by (table, the table named):
    a recreated table's rows get new rowids, so rows are not compared one by one."""
    rows = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
    # (each row: table, rowid, parent, fkid)
    return Counter((str(r[0]), str(r[2])) for r in map(tuple, rows))
