"""Pure parts of the control plane: keys, state machine, scheduler, rate buckets, query parsing,
and the migrations on each database."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from emberbox.server.api.errors import ApiError
from emberbox.server.api.query import parse_metadata, parse_order, parse_states, parse_time
from emberbox.server.auth.keys import generate_key, hash_key, is_well_formed, lookup_prefix
from emberbox.server.config import Capacity, Settings
from emberbox.server.db.engine import make_engine, migrate
from emberbox.server.lifecycle.states import (
    IllegalTransition,
    State,
    check_transition,
    public_state,
)
from emberbox.server.limits.ratelimit import TokenBuckets
from emberbox.server.limits.scheduler import ResourceScheduler, Usage
from emberbox.server.testing import create_postgres_database, drop_postgres_database
from tests.api.conftest import DB_PARAMS, PG_URL


def test_keys_have_the_sdk_shape_and_are_stored_hashed() -> None:
    key = generate_key()
    assert is_well_formed(key) and len(key) == 44 and key.startswith("e2b_")
    assert generate_key() != key
    assert hash_key(key) != key and len(hash_key(key)) == 64
    assert lookup_prefix(key) == key[:12]
    for bad in ("e2b_XYZ", "e2b_" + "0" * 39, "sk_" + "0" * 40, key.upper()):
        assert not is_well_formed(bad)


@pytest.mark.parametrize(
    ("current", "wanted", "ok"),
    [
        (State.CREATING, State.RUNNING, True),
        (State.RUNNING, State.KILLING, True),
        (State.KILLING, State.KILLED, True),
        (State.RUNNING, State.PAUSING, True),
        (State.PAUSED, State.RESUMING, True),
        (State.RUNNING, State.FAILED, True),
        (State.KILLED, State.RUNNING, False),
        (State.FAILED, State.KILLING, False),
        (State.RUNNING, State.KILLED, False),  # always through killing
        (State.PAUSED, State.RUNNING, False),  # always through resuming
        (State.CREATING, State.PAUSED, False),
    ],
)
def test_state_machine(current: State, wanted: State, ok: bool) -> None:
    if ok:
        check_transition(current, wanted)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(current, wanted)


def test_public_states() -> None:
    assert public_state(State.PAUSING) == "running"
    assert public_state(State.RESUMING) == "paused"


def test_scheduler_applies_the_overcommit_ratio() -> None:
    sched = ResourceScheduler(
        Capacity(cpus=2, memory_mb=1000, cpu_overcommit=2.0, memory_overcommit=1.5)
    )
    assert sched.cpu_limit == 4 and sched.memory_limit_mb == 1500
    assert sched.refusal(Usage(2, 500), 2, 500) is None
    assert "out of CPU" in (sched.refusal(Usage(3, 0), 2, 1) or "")
    assert "out of memory: 1200 of 1500 MiB" in (sched.refusal(Usage(0, 1200), 1, 400) or "")


def test_token_bucket() -> None:
    b = TokenBuckets(rate_per_s=2.0, burst=2)
    assert b.take("k", now=0.0) == 0.0 and b.take("k", now=0.0) == 0.0
    assert b.take("k", now=0.0) == pytest.approx(0.5)
    assert b.take("other", now=0.0) == 0.0
    assert b.take("k", now=0.5) == 0.0  # refilled one token
    with pytest.raises(ValueError):
        TokenBuckets(0, 1)


def test_metadata_double_decoding() -> None:
    wanted = {"a b": "c&d=e%f", "plain": "x"}
    inner = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in wanted.items())
    assert parse_metadata(quote(inner, safe="")) == wanted
    assert parse_metadata(None) == {} and parse_metadata("") == {}
    with pytest.raises(ApiError):
        parse_metadata("novalue")


def test_state_order_and_time_parsing() -> None:
    assert (
        parse_states(None)
        == parse_states(["running,paused"])
        == parse_states(["running", "paused"])
    )
    assert State.PAUSED not in parse_states(["running"])
    with pytest.raises(ApiError):
        parse_states(["asleep"])
    assert parse_order(None) is True and parse_order("asc") is False
    t = parse_time("2026-01-02T03:04:05+00:00", "x")
    assert t is not None and t.tzinfo is not None
    # "+" arrives as a space when a client forgets to encode it
    assert parse_time("2026-01-02T03:04:05 00:00", "x") == t
    with pytest.raises(ApiError):
        parse_time("yesterday", "x")


def test_settings_from_env() -> None:
    s = Settings.from_env({"EMBERBOX_DATA_DIR": "/x", "EMBERBOX_MAX_TIMEOUT_S": "60"})
    assert s.db_url == "sqlite+aiosqlite:////x/emberbox.db"
    assert s.limits.max_timeout_s == 60 and s.sandbox_domain == "localhost:3002"
    pg = Settings.from_env({"EMBERBOX_DATABASE_URL": "postgresql+asyncpg://u@h/d"})
    assert pg.db_url == "postgresql+asyncpg://u@h/d"


@pytest.mark.parametrize("db", DB_PARAMS)
def test_migrations_create_the_schema_and_are_idempotent(db: str, tmp_path) -> None:
    url = (
        create_postgres_database(PG_URL)
        if db == "postgres"
        else f"sqlite+aiosqlite:///{tmp_path}/m.db"
    )

    async def run() -> tuple[set[str], str, list[object]]:
        engine = make_engine(url)
        try:
            await migrate(engine)
            await migrate(engine)  # second run is a no-op
            async with engine.connect() as conn:
                tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
                version = (
                    await conn.execute(text("select version_num from alembic_version"))
                ).scalar_one()
                drift = await conn.run_sync(_differences_from_the_models)
            return tables, version, drift
        finally:
            await engine.dispose()

    try:
        tables, version, drift = asyncio.run(run())
    finally:
        if db == "postgres":
            drop_postgres_database(PG_URL, url)
    assert {"teams", "api_keys", "sandboxes", "sandbox_metadata", "snapshots"} <= tables
    assert version == _newest_migration()
    # The schema the migrations build is the one the models describe: a column a model
    # gained without a migration, or a type or NULL rule that differs, shows here.
    assert drift == []


_ROWS_BEFORE_0019 = [
    "insert into teams (id, name, created_at) values ('t1', 'team', '2026-12-06 10:00:00')",
    "insert into templates (id, team_id, name, public, spawn_count, created_at, updated_at) "
    "values ('tp', 't1', 'mine', false, 0, '2026-12-06 10:00:00', '2026-12-06 10:00:00')",
    "insert into template_builds (id, template_id, status, cpu_count, memory_mb, disk_mb, "
    "created_at, updated_at) values ('b1', 'tp', 'ready', 1, 256, 512, '2026-12-06 10:00:00', "
    "'2026-12-06 10:00:00')",
    "insert into template_tags (template_id, tag, build_id, created_at) "
    "values ('tp', 'default', 'b1', '2026-12-06 10:00:00')",
    "insert into template_build_logs (build_id, seq, timestamp, level, message) "
    "values ('b1', 0, '2026-12-06 10:00:00', 'info', 'built')",
    "insert into snapshots (id, team_id, source_sandbox_id, template_id, cpu_count, memory_mb, "
    "disk_mb, allow_internet, node_id, runtime, path, size_bytes, envd_access_token, internal, "
    "created_at, memory) values ('s1', 't1', 'sb', 'base', 1, 256, 512, true, 'n', 'gvisor', "
    "'/p', 10, 'token', false, '2026-12-06 10:00:00', true)",
]


async def _at_0018(engine: AsyncEngine, rows: list[str]) -> None:
    """The schema migrated to revision 0018 (before 0019 changed NULL rules), holding
    ``rows``."""
    from alembic import command

    from emberbox.server.db.engine import _alembic_config

    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "0018"))
    async with engine.begin() as conn:
        for insert in rows:
            await conn.execute(text(insert))


@pytest.mark.parametrize("db", DB_PARAMS)
def test_migrating_a_database_that_holds_rows_keeps_every_row(db: str, tmp_path) -> None:
    """A migration that recreates a SQLite table (to change a NULL rule, say) dropped it with
    foreign keys enforced: every build, tag and build log of the templates went with it."""

    url = (
        create_postgres_database(PG_URL)
        if db == "postgres"
        else f"sqlite+aiosqlite:///{tmp_path}/m.db"
    )
    tables = [i.split()[2] for i in _ROWS_BEFORE_0019]

    async def counts(engine: AsyncEngine) -> dict[str, int]:
        async with engine.connect() as conn:
            return {t: (await conn.execute(text(f"select count(*) from {t}"))).scalar_one()
                    for t in tables}  # fmt: skip

    async def run() -> tuple[dict[str, int], dict[str, int], object]:
        engine = make_engine(url)
        try:
            await _at_0018(engine, _ROWS_BEFORE_0019)
            before = await counts(engine)
            await migrate(engine)
            enforced = None
            if db == "sqlite":
                async with engine.connect() as conn:
                    enforced = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
            return before, await counts(engine), enforced
        finally:
            await engine.dispose()

    try:
        before, after, enforced = asyncio.run(run())
    finally:
        if db == "postgres":
            drop_postgres_database(PG_URL, url)
    assert before == dict.fromkeys(tables, 1) and after == before
    assert enforced == (1 if db == "sqlite" else None)  # (SQLite's are enforced again)


@pytest.mark.parametrize("db", DB_PARAMS)
def test_a_migration_that_fails_changes_nothing_and_runs_again_once_fixed(
    db: str, tmp_path
) -> None:
    """0019 refuses a snapshot row with no path (the column becomes NOT NULL). On SQLite
    the tables it had recreated by then stayed (DDL before the first row written was
    committed at once), and every later start failed on them."""

    url = (
        create_postgres_database(PG_URL)
        if db == "postgres"
        else f"sqlite+aiosqlite:///{tmp_path}/m.db"
    )
    no_path = _ROWS_BEFORE_0019[-1].replace("'/p'", "null")

    async def schema(engine: AsyncEngine) -> tuple[str, set[str]]:
        """The revision, and every table (on SQLite: every object, as its SQL)."""
        async with engine.connect() as conn:
            version = await conn.execute(text("select version_num from alembic_version"))
            if db == "sqlite":
                objects = await conn.execute(text("select sql from sqlite_master"))
                return version.scalar_one(), {str(sql) for (sql,) in objects}
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            return version.scalar_one(), tables

    async def run() -> tuple[tuple[str, set[str]], tuple[str, set[str]], str]:
        engine = make_engine(url)
        try:
            await _at_0018(engine, [*_ROWS_BEFORE_0019[:-1], no_path])
            before = await schema(engine)
            with pytest.raises(Exception, match=r"(?i)null"):
                await migrate(engine)
            failed = await schema(engine)
            async with engine.begin() as conn:
                await conn.execute(text("update snapshots set path = '/p'"))
            await migrate(engine)
            return before, failed, (await schema(engine))[0]
        finally:
            await engine.dispose()

    try:
        before, failed, fixed = asyncio.run(run())
    finally:
        if db == "postgres":
            drop_postgres_database(PG_URL, url)
    assert before[0] == "0018" and failed == before
    assert fixed == _newest_migration()


_MIGRATE_WHEN_TOLD = """
import asyncio, pathlib, sys, time
from emberbox.server.db.engine import make_engine, migrate
url, ready, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.002)
async def main() -> None:
    engine = make_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
asyncio.run(main())
"""


@pytest.mark.parametrize("start", ["empty", "0018"])
@pytest.mark.parametrize("db", DB_PARAMS)
def test_servers_starting_at_once_on_one_database_all_start_on_its_newest_schema(
    db: str, start: str, tmp_path
) -> None:
    """Several servers (several control planes on one PostgreSQL, a restart overlapping the
    old process) migrate one database at once: each starts, the schema is migrated once,
    and no row is lost."""
    import subprocess
    import sys
    import time

    url = (
        create_postgres_database(PG_URL)
        if db == "postgres"
        else f"sqlite+aiosqlite:///{tmp_path}/m.db"
    )

    async def prepare() -> None:
        engine = make_engine(url)
        try:
            await _at_0018(engine, _ROWS_BEFORE_0019)
        finally:
            await engine.dispose()

    async def result() -> tuple[list[str], int]:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                versions = await conn.execute(text("select version_num from alembic_version"))
                builds = await conn.execute(text("select count(*) from template_builds"))
                return [str(v) for (v,) in versions], int(builds.scalar_one())
        finally:
            await engine.dispose()

    async def serializable() -> None:
        """Transactions serializable by default (a database or role may set it): one waiting
        for the lock must still see the migration it waited for."""
        from sqlalchemy.engine import make_url

        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(
                    f'ALTER DATABASE "{make_url(url).database}" '
                    "SET default_transaction_isolation TO 'serializable'"
                )
        finally:
            await engine.dispose()

    try:
        if start == "0018":
            asyncio.run(prepare())
        if db == "postgres":
            asyncio.run(serializable())
        go = tmp_path / "go"
        argv = [sys.executable, "-c", _MIGRATE_WHEN_TOLD, url]
        servers = [
            subprocess.Popen(
                [*argv, str(tmp_path / f"r{i}"), str(go)], stderr=subprocess.PIPE, text=True
            )
            for i in range(3)
        ]
        try:
            while not all((tmp_path / f"r{i}").exists() for i in range(3)):
                assert all(s.poll() is None for s in servers)
                time.sleep(0.01)
            go.touch()
            errors = [s.communicate(timeout=120)[1][-2000:] for s in servers]
            outcomes = list(zip([s.returncode for s in servers], errors, strict=True))
        finally:
            for s in servers:
                s.kill()
        versions, builds = asyncio.run(result())
    finally:
        if db == "postgres":
            drop_postgres_database(PG_URL, url)
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    assert versions == [_newest_migration()]
    assert builds == (1 if start == "0018" else 0)


def test_an_in_memory_database_keeps_its_schema_after_the_migration() -> None:
    """SQLite's ``:memory:`` is one connection: the migration must not drop it."""

    async def run() -> int:
        engine = make_engine("sqlite+aiosqlite://")
        try:
            await migrate(engine)
            async with engine.connect() as conn:
                return int(
                    (await conn.execute(text("select count(*) from sandboxes"))).scalar_one()
                )
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == 0


def _differences_from_the_models(conn: Connection) -> list[object]:
    """What Alembic's autogenerate would change for the schema to match the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from emberbox.server.db import templates  # noqa: F401  (its tables join the metadata)
    from emberbox.server.db.models import Base

    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


def _newest_migration() -> str:
    """The head of the migration chain (one head: a second one would be a merge to make)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from emberbox.server.db.engine import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    (head,) = ScriptDirectory.from_config(cfg).get_heads()
    return str(head)
