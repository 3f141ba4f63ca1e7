"""PostgreSQL specifics: schema and migrations, the database clock, cancellation, closing.

The contract suite (``test_instances``, ``test_orchestrations``, ...) also runs over PostgreSQL;
wake-ups across processes, concurrency and server restarts have modules of their own.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import psycopg
import pytest

from duratask.notify import ORCHESTRATIONS
from duratask.storage.base import InstanceFilter
from duratask.storage.postgres import PostgresStorage, SchemaVersionError, migrate, open_postgres_storage
from duratask.storage.postgres.db import is_transient, notification_payloads
from duratask.storage.postgres.migrations import Migration, load_migrations, migrate_connection
from duratask.storage.postgres.rows import INSTANCE_COLUMNS
from tests.pgserver import unique_name

from .builders import LONG, SHORT, commit_of, create, expire, lease_only

LATEST = len(load_migrations())


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


# --- schema and migrations -------------------------------------------------------------------


async def test_migrate_produces_the_schema_and_records_its_version(pg_fresh_url: str) -> None:
    assert await migrate(pg_fresh_url) == LATEST

    tables = {
        name for (name,) in _rows(pg_fresh_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    indexes = {
        name
        for (name,) in _rows(pg_fresh_url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
    }
    columns = [
        name
        for (name,) in _rows(
            pg_fresh_url,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'duratask_instances' "
            "ORDER BY ordinal_position",
        )
    ]
    assert tables == {
        "duratask_schema",
        "duratask_instances",
        "duratask_history",
        "duratask_inbox",
        "duratask_activities",
    }
    assert {
        "duratask_instances_by_created",
        "duratask_instances_by_status",
        "duratask_instances_by_parent",
        "duratask_inbox_by_instance",
        "duratask_inbox_by_visible",
        "duratask_inbox_by_ready",
        "duratask_activities_by_lease",
        "duratask_activities_by_instance",
    } <= indexes
    assert set(INSTANCE_COLUMNS) <= set(columns)
    assert _rows(pg_fresh_url, "SELECT version, name FROM duratask_schema ORDER BY version") == [
        (1, "initial"),
        (2, "ready_messages"),
        (3, "runner"),
    ]
    # Every time is a timestamptz.
    kinds = _rows(
        pg_fresh_url,
        "SELECT DISTINCT data_type FROM information_schema.columns "
        "WHERE table_name LIKE 'duratask%' AND (column_name LIKE '%_at' OR column_name LIKE '%expires%' "
        "OR column_name = 'scheduled_start')",
    )
    assert kinds == [("timestamp with time zone",)]


async def test_migrating_again_applies_nothing_and_keeps_data(pg_fresh_url: str) -> None:
    storage = await open_postgres_storage(pg_fresh_url)
    await create(storage, "a")
    await storage.close()

    assert await migrate(pg_fresh_url) == LATEST
    again = await open_postgres_storage(pg_fresh_url)
    try:
        assert await again.get_instance("a") is not None
    finally:
        await again.close()
    assert _rows(pg_fresh_url, "SELECT count(*) FROM duratask_schema") == [(LATEST,)]


async def test_concurrent_migrators_migrate_once(pg_fresh_url: str) -> None:
    versions = await asyncio.gather(*(migrate(pg_fresh_url) for _ in range(8)))
    storages = [PostgresStorage(pg_fresh_url, f"hub{n}") for n in range(4)]
    await asyncio.gather(*(s.open() for s in storages))
    for s in storages:
        await s.close()

    assert versions == [LATEST] * 8
    assert _rows(pg_fresh_url, "SELECT count(*) FROM duratask_schema") == [(LATEST,)]


async def test_migrate_false_refuses_an_unmigrated_database(pg_fresh_url: str) -> None:
    refused = PostgresStorage(pg_fresh_url, migrate=False)
    with pytest.raises(SchemaVersionError, match=rf"schema version 0.*needs version {LATEST}.*duratask migrate"):
        await refused.open()
    # Nothing was created behind the caller's back.
    assert _rows(pg_fresh_url, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'duratask%'") == [(0,)]

    await migrate(pg_fresh_url)
    accepted = await open_postgres_storage(pg_fresh_url, migrate=False)
    try:
        await create(accepted, "a")
    finally:
        await accepted.close()


async def test_a_database_from_a_newer_duratask_is_refused(pg_fresh_url: str) -> None:
    await migrate(pg_fresh_url)
    future = LATEST + 1
    with psycopg.connect(pg_fresh_url) as conn:
        conn.execute("INSERT INTO duratask_schema (version, name) VALUES (%s, 'from_the_future')", (future,))

    for migrate_flag in (True, False):
        refused = PostgresStorage(pg_fresh_url, migrate=migrate_flag)
        with pytest.raises(SchemaVersionError, match=f"schema version {future}.*upgrade duratask"):
            await refused.open()
    with pytest.raises(SchemaVersionError):
        await migrate(pg_fresh_url)


async def test_a_failing_migration_leaves_the_database_as_it_was(pg_fresh_url: str) -> None:
    broken = [
        *load_migrations(),
        Migration(LATEST + 1, "broken", "CREATE TABLE half_done (x int); SELECT 1/0;"),
    ]
    conn = await psycopg.AsyncConnection.connect(pg_fresh_url, autocommit=True)
    try:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await migrate_connection(conn, broken, where="test")
    finally:
        await conn.close()
    assert _rows(pg_fresh_url, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'duratask%'") == [(0,)]
    assert _rows(pg_fresh_url, "SELECT to_regclass('half_done') IS NULL") == [(True,)]


async def test_an_unreachable_server_fails_open_clearly() -> None:
    storage = PostgresStorage("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(psycopg.OperationalError):
        await storage.open()
    with pytest.raises(RuntimeError, match="not open"):
        await storage.get_instance("a")


# --- behaviour beyond the contract -----------------------------------------------------------


async def test_leases_expire_by_the_database_clock(pg_url: str) -> None:
    storage = await open_postgres_storage(pg_url, unique_name("hub"))
    try:
        await create(storage, "a")
        lease = await lease_only(storage, lease_seconds=SHORT)
        (db_now,) = _rows(pg_url, "SELECT now()")[0]
        assert isinstance(db_now, datetime)
        assert abs((lease.expires_at - db_now).total_seconds() - SHORT) < 1.0
        assert lease.expires_at.tzinfo is UTC

        await expire()
        assert await storage.commit_orchestrations([commit_of(lease)]) == [False]
        assert (await lease_only(storage, LONG)).token != lease.token
    finally:
        await storage.close()


async def test_task_hubs_share_a_database_without_seeing_each_other(pg_url: str) -> None:
    one = await open_postgres_storage(pg_url, unique_name("hub"))
    two = await open_postgres_storage(pg_url, unique_name("hub"))
    try:
        await create(one, "same-id")
        await create(two, "same-id")
        assert len(await one.lease_orchestrations(10, LONG)) == 1
        assert len(await two.lease_orchestrations(10, LONG)) == 1
        assert len(await one.query_instances(InstanceFilter(), 10, None)) == 1
    finally:
        await one.close()
        await two.close()


async def test_a_cancelled_call_does_not_disturb_the_others(pg_url: str) -> None:
    storage = await open_postgres_storage(pg_url, unique_name("hub"))
    try:
        calls = [asyncio.ensure_future(create(storage, f"i{n}")) for n in range(50)]
        await asyncio.sleep(0.005)
        calls[10].cancel()
        calls[20].cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert sum(isinstance(r, asyncio.CancelledError) for r in results) <= 2
        assert not [r for r in results if isinstance(r, Exception)]
        count = len(await storage.query_instances(InstanceFilter(), 100, None))
        assert 48 <= count <= 50  # a cancelled call may or may not have committed
        await create(storage, "after")
        assert await storage.get_instance("after") is not None
    finally:
        await storage.close()


async def test_open_postgres_storage_shares_one_object_per_database_hub_and_event_loop(pg_url: str) -> None:
    hub = unique_name("hub")
    first = await open_postgres_storage(pg_url, hub)
    second = await open_postgres_storage(pg_url, hub)
    other_hub = await open_postgres_storage(pg_url, unique_name("hub"))
    assert second is first and other_hub is not first

    # A client and a worker sharing it wake each other without the server.
    woken = second.notifier.register(ORCHESTRATIONS)
    await create(first, "a")
    await asyncio.sleep(0)  # let the notifier's call_soon_threadsafe run
    assert woken.done()

    await first.close()
    assert await second.get_instance("a") is not None  # still open for its other user
    await second.close()
    with pytest.raises(RuntimeError, match="not open"):
        await second.get_instance("a")
    third = await open_postgres_storage(pg_url, hub)  # a new object once the last user closed
    assert third is not first
    await third.close()
    await other_hub.close()

    def in_another_loop() -> bool:
        async def open_there() -> bool:
            there = await open_postgres_storage(pg_url, hub)
            await there.close()
            return there is not third

        return asyncio.run(open_there())

    assert await asyncio.to_thread(in_another_loop)


async def test_a_closed_storage_refuses_work(pg_url: str) -> None:
    storage = PostgresStorage(pg_url, unique_name("hub"))
    with pytest.raises(RuntimeError, match="not open"):
        await storage.get_instance("a")
    await storage.open()
    await storage.close()
    await storage.close()  # idempotent
    with pytest.raises(RuntimeError, match="not open"):
        await storage.get_instance("a")


def test_passwords_stay_out_of_the_storage_repr() -> None:
    storage = PostgresStorage("postgresql://user:s3cret@db.example:6543/app", "orders")
    assert "s3cret" not in repr(storage)
    assert "db.example:6543" in repr(storage)


def test_notification_payloads_fit_in_a_notify() -> None:
    topics = {f"instance:{'x' * 200}-{n}" for n in range(200)}
    payloads = notification_payloads("origin", topics)
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    decoded = [json.loads(p) for p in payloads]
    assert {t for d in decoded for t in d["topics"]} == topics
    assert {d["origin"] for d in decoded} == {"origin"}


def test_transient_errors_are_those_of_connections_and_restarts() -> None:
    assert is_transient(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert is_transient(psycopg.errors.AdminShutdown())
    assert is_transient(psycopg.errors.SerializationFailure())
    assert not is_transient(psycopg.errors.UniqueViolation())
    assert not is_transient(psycopg.errors.InvalidPassword())
