"""SQLite keeps its last reading of ``next_visible_at`` (every worker asks before every sleep) and
reads again only when it may be out of date: a commit queued a message for later, here or in
another process, or the moment it named has passed. A stale reading would make a timer late."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from duratask.storage.sqlite import SqliteStorage, ops

from .builders import commit_of, create, lease_only, message, raised, seconds, utcnow


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    opened = SqliteStorage(str(tmp_path / "due.db"))
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many times the storage really queried the database for it."""
    real = ops.next_visible_at
    count = 0

    def counted(tx: Any) -> Any:
        nonlocal count
        count += 1
        return real(tx)

    monkeypatch.setattr(ops, "next_visible_at", counted)
    return lambda: count


async def test_a_reading_is_reused_until_something_is_queued_for_later(
    storage: SqliteStorage, reads: Callable[[], int]
) -> None:
    await create(storage, "a")
    assert await storage.next_visible_at() is None
    await storage.enqueue([message("a", raised("now"))])  # visible at once: changes nothing
    lease = await lease_only(storage)
    await storage.commit_orchestrations([commit_of(lease)])
    assert await storage.next_visible_at() is None
    assert reads() == 1

    later = utcnow() + seconds(60)
    await storage.enqueue([message("a", raised("later"), later)])
    assert await storage.next_visible_at() == later
    assert await storage.next_visible_at() == later
    assert reads() == 2


async def test_timers_set_by_a_commit_and_scheduled_starts_are_seen(storage: SqliteStorage) -> None:
    await create(storage, "a")
    assert await storage.next_visible_at() is None
    lease = await lease_only(storage)
    fire_at = utcnow() + seconds(60)
    await storage.commit_orchestrations([commit_of(lease, messages=[message("a", raised("timer"), fire_at)])])
    assert await storage.next_visible_at() == fire_at

    start_at = utcnow() + seconds(30)
    await create(storage, "b", visible_at=start_at)
    assert await storage.next_visible_at() == start_at


async def test_a_reading_whose_moment_passed_is_read_again(storage: SqliteStorage) -> None:
    await create(storage, "a")
    soon, later = utcnow() + seconds(0.05), utcnow() + seconds(60)
    await storage.enqueue([message("a", raised("soon"), soon), message("a", raised("later"), later)])
    assert await storage.next_visible_at() == soon
    await asyncio.sleep(0.1)
    assert await storage.next_visible_at() == later


async def test_a_timer_queued_by_another_process_is_seen(storage: SqliteStorage, tmp_path: Path) -> None:
    await create(storage, "a")
    assert await storage.next_visible_at() is None
    other = SqliteStorage(str(tmp_path / "due.db"))  # another connection, as another process has
    await other.open()
    try:
        later = utcnow() + seconds(60)
        await other.enqueue([message("a", raised("later"), later)])
    finally:
        await other.close()
    for _ in range(100):  # this storage notices other processes' commits every WATCH_INTERVAL
        if await storage.next_visible_at() == later:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the other process's timer was never seen")
