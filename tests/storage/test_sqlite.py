"""SQLite specifics: schema and migrations, pragmas, sharing within and across processes, crashes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.notify import ORCHESTRATIONS
from duratask.storage.base import InstanceFilter
from duratask.storage.sqlite import SchemaVersionError, SqliteStorage, open_sqlite_storage
from duratask.storage.sqlite import storage as storage_module
from duratask.storage.sqlite.migrations import load_migrations
from duratask.storage.sqlite.rows import INSTANCE_COLUMNS
from duratask.storage.sqlite.runner import Tx

from .builders import LONG, commit_of, create, lease_all, lease_only
from .sqlite_process import complete_leased, lease_until_done

SCRIPT = Path(__file__).with_name("sqlite_process.py")


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "test.db")


def _raw(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


async def _pragma(storage: SqliteStorage, name: str) -> object:
    return await storage._read(lambda tx: tx.conn.execute(f"PRAGMA {name}").fetchone()[0])


# --- schema and migrations -------------------------------------------------------------------


async def test_migrations_produce_the_schema(db: str) -> None:
    storage = SqliteStorage(db)
    await storage.open()
    await storage.close()

    with _raw(db) as conn:
        objects = dict(conn.execute("SELECT name, type FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
        columns = [row[1] for row in conn.execute("PRAGMA table_info(instances)")]
        versions = conn.execute("SELECT version, name FROM duratask_schema").fetchall()
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]

    tables = {name for name, kind in objects.items() if kind == "table"}
    indexes = {name for name, kind in objects.items() if kind == "index"}
    assert tables == {"duratask_schema", "instances", "history", "inbox", "activities"}
    assert indexes == {
        "instances_by_created",
        "instances_by_status",
        "instances_by_parent",
        "inbox_by_instance",
        "inbox_by_visible",
        "activities_by_lease",
        "activities_by_instance",
    }
    assert columns == ["taskhub", *INSTANCE_COLUMNS, "lease_token", "lease_expires"]
    assert versions == [(m.version, m.name) for m in load_migrations()]
    assert integrity == "ok"


async def test_reopening_applies_nothing_twice_and_keeps_data(db: str) -> None:
    for _ in range(2):
        storage = SqliteStorage(db)
        await storage.open()
        if await storage.get_instance("a") is None:
            await create(storage, "a")
        await storage.close()

    with _raw(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM duratask_schema").fetchone()[0] == len(load_migrations())
        assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 1


async def test_concurrent_first_opens_migrate_once(db: str) -> None:
    storages = [SqliteStorage(db, f"hub{n}") for n in range(4)]
    await asyncio.gather(*(s.open() for s in storages))
    for s in storages:
        await s.close()
    with _raw(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM duratask_schema").fetchone()[0] == len(load_migrations())


async def test_a_database_from_a_newer_duratask_is_refused(db: str) -> None:
    storage = SqliteStorage(db)
    await storage.open()
    await storage.close()
    future = len(load_migrations()) + 1
    with _raw(db) as conn:
        conn.execute("INSERT INTO duratask_schema VALUES (?, 'from_the_future', 0)", (future,))

    refused = SqliteStorage(db)
    with pytest.raises(SchemaVersionError, match=f"schema version {future}.*upgrade duratask"):
        await refused.open()
    await refused.close()


async def test_an_unopenable_path_fails_clearly_and_leaves_no_shared_object(tmp_path: Path) -> None:
    path = str(tmp_path / "missing-dir" / "x.db")
    with pytest.raises(sqlite3.OperationalError, match="cannot open the SQLite database .*missing-dir"):
        await open_sqlite_storage(path)
    assert (os.path.realpath(path), "default") not in storage_module._registry


# --- pragmas and durability ------------------------------------------------------------------


@pytest.mark.parametrize(("durable", "synchronous"), [(True, 2), (False, 1)])
async def test_durability_setting(db: str, durable: bool, synchronous: int) -> None:
    storage = SqliteStorage(db, durable=durable)
    await storage.open()
    try:
        assert await _pragma(storage, "journal_mode") == "wal"
        assert await _pragma(storage, "synchronous") == synchronous
        assert await _pragma(storage, "busy_timeout") > 0  # type: ignore[operator]
        await create(storage, "a")
        lease = await lease_only(storage)
        assert await storage.commit_orchestrations([commit_of(lease, status=Status.COMPLETED)]) == [True]
    finally:
        await storage.close()

    reopened = SqliteStorage(db)
    await reopened.open()
    assert (await reopened.get_instance("a")).status is Status.COMPLETED  # type: ignore[union-attr]
    await reopened.close()


async def test_files_are_shared_across_processes_and_memory_is_not(db: str) -> None:
    file_storage, memory_storage = SqliteStorage(db), SqliteStorage(":memory:")
    assert file_storage.shared_across_processes is True
    assert memory_storage.shared_across_processes is False


# --- one shared object per database and hub --------------------------------------------------


async def test_open_sqlite_storage_shares_one_object_per_database_and_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = await open_sqlite_storage("shared.db")
    same = await open_sqlite_storage(str(tmp_path / "." / "shared.db"))
    other_hub = await open_sqlite_storage("shared.db", "other")
    try:
        assert same is first
        assert other_hub is not first
        waiter = first.notifier.register(ORCHESTRATIONS)
        await create(same, "a")
        await asyncio.sleep(0)
        assert waiter.done()  # in-process wake-ups reach every user of the database
    finally:
        for s in (first, same, other_hub):
            await s.close()


async def test_memory_is_one_database_until_its_last_user_closes() -> None:
    client = await open_sqlite_storage(":memory:", "memtest")
    worker = await open_sqlite_storage(":memory:", "memtest")
    assert worker is client
    await create(client, "a")
    await client.close()
    assert (await lease_only(worker)).instance.instance_id == "a"  # still open for the worker
    await worker.close()
    with pytest.raises(RuntimeError):
        await worker.get_instance("a")

    fresh = await open_sqlite_storage(":memory:", "memtest")
    try:
        assert fresh is not client
        assert await fresh.get_instance("a") is None
    finally:
        await fresh.close()


async def test_a_closed_storage_refuses_work(db: str) -> None:
    storage = SqliteStorage(db)
    with pytest.raises(RuntimeError, match="not open"):
        await storage.get_instance("a")
    await storage.open()
    await storage.close()
    await storage.close()  # idempotent
    with pytest.raises(RuntimeError):
        await storage.get_instance("a")
    with pytest.raises(RuntimeError, match="closed"):
        await storage.open()


async def test_a_cancelled_call_does_not_disturb_the_others(db: str) -> None:
    storage = SqliteStorage(db)
    await storage.open()
    try:
        calls = [asyncio.ensure_future(create(storage, f"i{n}")) for n in range(50)]
        calls[10].cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[10], asyncio.CancelledError)
        count = len(await storage.query_instances(InstanceFilter(), 100, None))
        assert count in (49, 50)  # a cancelled call may or may not have run
        await create(storage, "after")
    finally:
        await storage.close()


async def test_queued_writes_share_a_transaction_yet_fail_alone(db: str) -> None:
    storage = SqliteStorage(db)
    await storage.open()
    try:
        await create(storage, "dup")
        results = await asyncio.gather(
            *(create(storage, "dup" if n % 7 == 0 else f"i{n}") for n in range(100)), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, Exception)]
        assert len(failures) == 15  # n = 0, 7, ..., 98
        assert len(await storage.query_instances(InstanceFilter(), 200, None)) == 86
    finally:
        await storage.close()


# --- several connections, several processes --------------------------------------------------


async def test_two_storages_on_one_file_never_lease_the_same_instance(db: str) -> None:
    one, two = SqliteStorage(db), SqliteStorage(db)
    await one.open()
    await two.open()
    try:
        await asyncio.gather(*(create(one, f"i{n:03}") for n in range(200)))
        got_one: list[str] = []
        got_two: list[str] = []
        # While one storage holds leases, the other leases other instances (deterministic)...
        held, taken = await one.lease_orchestrations(3, 60), await two.lease_orchestrations(3, 60)
        assert held and taken
        await complete_leased(one, held, got_one)
        await complete_leased(two, taken, got_two)
        # ...and racing each other for the rest, neither takes what the other holds. (Which one
        # wins more of the race is up to SQLite's lock and the machine's load.)
        await asyncio.gather(lease_until_done(one, got_one), lease_until_done(two, got_two))
    finally:
        await one.close()
        await two.close()

    assert not set(got_one) & set(got_two)
    assert sorted(got_one + got_two) == [f"i{n:03}" for n in range(200)]


async def test_a_second_process_on_the_same_file_never_leases_the_same_instance(db: str) -> None:
    storage = SqliteStorage(db)
    await storage.open()
    try:
        await asyncio.gather(*(create(storage, f"i{n:03}") for n in range(300)))
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "lease", db, stdin=PIPE, stdout=PIPE
        )
        assert child.stdin is not None and child.stdout is not None
        assert await child.stdout.readline() == b"ready\n"
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        mine: list[str] = []
        await lease_until_done(storage, mine)
        output, _ = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 0
        theirs = output.decode().split()
        instances = await storage.query_instances(InstanceFilter(), 1000, None)
    finally:
        await storage.close()

    assert not set(mine) & set(theirs)
    assert sorted(mine + theirs) == [f"i{n:03}" for n in range(300)]
    assert all(i.status is Status.COMPLETED for i in instances)


async def test_a_killed_process_loses_no_committed_work(db: str) -> None:
    child = await asyncio.create_subprocess_exec(sys.executable, str(SCRIPT), "create", db, stdout=PIPE)
    assert child.stdout is not None
    created = [(await child.stdout.readline()).decode().strip() for _ in range(100)]
    child.send_signal(signal.SIGKILL)
    await child.wait()

    storage = SqliteStorage(db)
    await storage.open()
    try:
        stored = {i.instance_id for i in await storage.query_instances(InstanceFilter(), 100_000, None)}
        assert set(created) <= stored
        leases = await lease_all(storage, LONG, limit=100_000)
        assert len(leases) == len(stored)  # every instance kept its ExecutionStarted message
    finally:
        await storage.close()
    with _raw(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _in_forked_child(path: str, inherited: SqliteStorage) -> None:
    async def child() -> None:
        with pytest.raises(RuntimeError, match="parent process"):
            await inherited.get_instance("a")
        await inherited.close()  # returns instead of waiting for a thread that is not here
        own = await open_sqlite_storage(path)
        try:
            assert own is not inherited
            assert await own.get_instance("a") is not None
            await create(own, "from-child")
        finally:
            await own.close()

    asyncio.run(child())


async def test_a_forked_child_opens_its_own_storage(db: str) -> None:
    parent = await open_sqlite_storage(db)
    try:
        await create(parent, "a")
        process = multiprocessing.get_context("fork").Process(target=_in_forked_child, args=(db, parent))
        process.start()
        await asyncio.to_thread(process.join, 30)
        assert process.exitcode == 0
        assert await parent.get_instance("from-child") is not None
    finally:
        await parent.close()


async def test_an_operation_that_raises_fails_alone(db: str) -> None:
    storage = SqliteStorage(db)
    await storage.open()
    try:

        def half_done(tx: Tx) -> None:
            tx.conn.execute("DELETE FROM instances")
            raise ZeroDivisionError

        await create(storage, "a")
        with pytest.raises(ZeroDivisionError):
            await storage._write(half_done)
        with pytest.raises(sqlite3.OperationalError):
            await storage._read(lambda tx: tx.conn.execute("SELECT * FROM nowhere").fetchall())
        assert await storage.get_instance("a") is not None  # the half-done write was rolled back
    finally:
        await storage.close()
