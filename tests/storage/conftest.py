"""The storage contract suite runs every test over every storage in ``FACTORIES``.

A factory opens the storage of one task hub on "the test's database": two calls with the same
``tmp_path`` and hub must reach the same data, as two clients of one database would.

A new storage joins the suite with one more entry in ``FACTORIES``. A storage whose database
outlives the test (PostgreSQL) keeps tests apart with a task hub name unique to the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from duratask.storage.base import Storage
from duratask.storage.sqlite import SqliteStorage, open_sqlite_storage

StorageFactory = Callable[[Path, str], Awaitable[Storage]]
OpenStorage = Callable[..., Awaitable[Storage]]


async def _sqlite_file(tmp_path: Path, taskhub: str) -> Storage:
    storage = SqliteStorage(str(tmp_path / "duratask.db"), taskhub)
    await storage.open()
    return storage


async def _memory(tmp_path: Path, taskhub: str) -> Storage:
    # The process-wide shared in-memory database, as ``memory://`` uses it.
    return await open_sqlite_storage(":memory:", taskhub)


async def _postgres(tmp_path: Path, taskhub: str) -> Storage:
    # One database for the session; the hub name is unique to the test (tmp_path is) and the session.
    from duratask.storage.postgres import open_postgres_storage
    from tests.pgserver import SESSION_ID, session_database_url

    return await open_postgres_storage(session_database_url(), f"{SESSION_ID}/{tmp_path.name}/{taskhub}")


FACTORIES: dict[str, StorageFactory] = {
    "sqlite": _sqlite_file,
    "memory": _memory,
    "postgres": _postgres,
}


@pytest.fixture(params=list(FACTORIES))
async def open_storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStorage]:
    """Opens storages of this test's database (``await open_storage("hub")``); closes them afterwards."""
    factory = FACTORIES[request.param]
    opened: list[Storage] = []

    async def open_(taskhub: str = "default") -> Storage:
        storage = await factory(tmp_path, taskhub)
        opened.append(storage)
        return storage

    yield open_
    for storage in reversed(opened):
        await storage.close()


@pytest.fixture
async def storage(open_storage: OpenStorage) -> Storage:
    return await open_storage()
