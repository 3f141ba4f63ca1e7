"""Schema versions as ``duratask migrate`` and ``?migrate=false`` see them, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from duratask import DurableTaskClient
from duratask.errors import ConnectionStringError, SchemaVersionError
from duratask.storage.connect import database_target, migrate_database, open_database_storage
from duratask.storage.postgres.migrations import load_migrations as load_postgres_migrations
from duratask.storage.sqlite import SqliteStorage
from duratask.storage.sqlite.migrations import load_migrations

LATEST = len(load_migrations())


async def test_sqlite_with_migrate_false_needs_duratask_migrate(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    refused = SqliteStorage(path, migrate=False)
    with pytest.raises(SchemaVersionError, match=r"schema version 0.*needs version 1.*Run `duratask migrate`"):
        await refused.open()
    await refused.close()

    done = await migrate_database(database_target(f"sqlite:///{path}", "test"))
    assert (done.before, done.after, done.latest) == (0, LATEST, LATEST)

    accepted = SqliteStorage(path, migrate=False)
    await accepted.open()
    assert await accepted.export_instances(None, 10) == []
    await accepted.close()
    again = await migrate_database(database_target(f"sqlite:///{path}", "test"))
    assert (again.before, again.after) == (LATEST, LATEST)


async def test_the_connection_string_option_reaches_sqlite(tmp_path: Path) -> None:
    with pytest.raises(SchemaVersionError, match="duratask migrate"):
        async with DurableTaskClient(f"sqlite:///{tmp_path / 'c.db'}?migrate=false") as client:
            await client.get_instance("x")
    async with DurableTaskClient("memory://?migrate=false") as client:  # nothing there to protect
        assert await client.get_instance("x") is None


async def test_a_newer_sqlite_database_is_refused_by_migrate_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    target = database_target(f"sqlite:///{path}?migrate=false", "test")
    await migrate_database(target)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO duratask_schema (version, name, applied_at) VALUES (99, 'future', 0)")

    with pytest.raises(SchemaVersionError, match="schema version 99.*upgrade duratask"):
        await migrate_database(target)
    for migrate in (True, False):
        with pytest.raises(SchemaVersionError, match="schema version 99"):
            await SqliteStorage(str(path), migrate=migrate).open()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT max(version) FROM duratask_schema").fetchone() == (99,)


async def test_postgres_migrate_reports_before_and_after(pg_fresh_url: str) -> None:
    target = database_target(f"{pg_fresh_url}?migrate=false&taskhub=h", "test")
    with pytest.raises(SchemaVersionError, match="Run `duratask migrate`"):
        await open_database_storage(target)

    done = await migrate_database(target)
    latest = len(load_postgres_migrations())
    assert (done.before, done.after, done.latest) == (0, latest, latest)
    assert done.database.startswith("PostgreSQL database ")
    storage = await open_database_storage(target)  # migrate=false now accepts it
    assert await storage.export_instances(None, 1) == []
    await storage.close()

    with psycopg.connect(pg_fresh_url, autocommit=True) as conn:
        conn.execute("INSERT INTO duratask_schema (version, name) VALUES (99, 'future')")
    with pytest.raises(SchemaVersionError, match="schema version 99.*upgrade duratask"):
        await migrate_database(target)


@pytest.mark.parametrize(
    ("connection", "message"),
    [
        ("memory://", "memory:// exists only inside the process"),
        ("Endpoint=http://127.0.0.1:1;TaskHub=x;Authentication=None", "not on a scheduler server"),
        ("redis://x", "unknown connection string scheme"),
    ],
)
def test_only_databases_qualify(connection: str, message: str) -> None:
    with pytest.raises(ConnectionStringError, match=message):
        database_target(connection, "duratask migrate")
