"""LocalBackend leasing the next work item along with a completion (``lease_activities=`` /
``lease_orchestrations=``), over a real SQLite file: the work is handed out once, to this
backend first, woken without a storage lease, and handed back by ``release_prefetched``."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from duratask import history as h
from duratask.backend.api import OrchestrationResult
from duratask.backend.local import BackendOptions, LocalBackend, utcnow
from duratask.storage.sqlite import SqliteStorage


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[tuple[LocalBackend, LocalBackend]]:
    """Two backends (two worker processes, as far as leases go) over one SQLite file."""
    opened = []
    for _ in range(2):
        storage = SqliteStorage(str(tmp_path / "prefetch.db"))
        await storage.open()
        opened.append(LocalBackend(storage, BackendOptions(lease_seconds=30)))
    yield opened[0], opened[1]
    for backend in opened:
        await backend.close()


def _schedule(*names: str) -> OrchestrationResult:
    return OrchestrationResult(actions=[h.ScheduleTask(id=n, name=name) for n, name in enumerate(names)])


async def _first_episode_scheduling(backend: LocalBackend, *names: str, room: int) -> None:
    await backend.start_orchestration("flow", "i1", None)
    (item,) = await backend.lease_orchestrations(10)
    assert await backend.complete_orchestrations([(item, _schedule(*names))], lease_activities=room) == [True]


async def test_activities_scheduled_by_a_commit_go_to_the_committer_first(
    backends: tuple[LocalBackend, LocalBackend],
) -> None:
    mine, other = backends
    await _first_episode_scheduling(mine, "a", "b", "c", room=2)

    assert [item.name for item in await other.lease_activities(10)] == ["c"]  # beyond the room
    await asyncio.wait_for(mine.wait_for_work("activity", 5.0), 1.0)  # at once: work is held here
    assert [item.name for item in await mine.lease_activities(1)] == ["a"]
    assert [item.name for item in await mine.lease_activities(10)] == ["b"]


async def test_a_completion_leases_the_orchestration_and_wakes_the_waiting_loop(
    backends: tuple[LocalBackend, LocalBackend],
) -> None:
    mine, other = backends
    await _first_episode_scheduling(mine, "a", room=0)
    (activity,) = await mine.lease_activities(10)
    sleeper = asyncio.create_task(mine.wait_for_work("orchestration", 30.0))
    await asyncio.sleep(0.05)
    assert not sleeper.done()

    done = h.TaskCompleted(timestamp=utcnow(), task_scheduled_id=activity.task_id, result='"A"')
    assert await mine.complete_activities([(activity, done)], lease_orchestrations=5) == [True]

    await asyncio.wait_for(sleeper, 1.0)
    assert await other.lease_orchestrations(10) == []  # leased by ``mine`` in the same transaction
    (item,) = await mine.lease_orchestrations(10)
    assert item.instance_id == "i1"
    assert any(isinstance(event, h.TaskCompleted) and event.result == '"A"' for event in item.new_events)
    assert await mine.complete_orchestrations([(item, OrchestrationResult(actions=[]))]) == [True]


async def test_release_hands_prefetched_work_back_at_once(
    backends: tuple[LocalBackend, LocalBackend],
) -> None:
    mine, other = backends
    await _first_episode_scheduling(mine, "a", room=5)
    assert await other.lease_activities(10) == []

    await mine.release_prefetched()

    assert [item.name for item in await other.lease_activities(10)] == ["a"]
    assert await mine.lease_activities(10) == []


async def test_an_episode_held_past_lease_seconds_keeps_its_lease(tmp_path: Path) -> None:
    """The backend renews the orchestration leases it holds (an official worker may sit on a work
    item for a while; a replay may be long), so nobody else runs the episode meanwhile."""
    backends = []
    for _ in range(2):
        storage = SqliteStorage(str(tmp_path / "renew.db"))
        await storage.open()
        backends.append(LocalBackend(storage, BackendOptions(lease_seconds=0.6)))
    mine, other = backends
    try:
        await mine.start_orchestration("flow", "i1", None)
        (item,) = await mine.lease_orchestrations(10)

        await asyncio.sleep(1.5)  # two and a half lease lengths

        assert await other.lease_orchestrations(10) == []
        assert await mine.complete_orchestrations([(item, OrchestrationResult(actions=[]))]) == [True]
    finally:
        for backend in backends:
            await backend.close()


async def test_a_prefetched_episode_whose_lease_was_lost_is_not_handed_out(tmp_path: Path) -> None:
    """Renewing what it prefetched, the backend finds a lease gone (another worker took the instance
    while this process was paused past its lease): it drops the episode rather than run it too."""
    path = tmp_path / "lost.db"
    storage = SqliteStorage(str(path))
    await storage.open()
    mine = LocalBackend(storage, BackendOptions(lease_seconds=0.3))
    try:
        await _first_episode_scheduling(mine, "a", room=0)
        (activity,) = await mine.lease_activities(10)
        done = h.TaskCompleted(timestamp=utcnow(), task_scheduled_id=activity.task_id, result='"A"')
        assert await mine.complete_activities([(activity, done)], lease_orchestrations=5) == [True]
        # Another worker holds the instance now, for a long while (the file is the real one).
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(
                "UPDATE instances SET lease_token = 'theirs', lease_expires = lease_expires + 60000000"
            )

        await asyncio.sleep(0.4)  # more than one renewal round (every lease_seconds / 3)

        assert await mine.lease_orchestrations(10) == []
    finally:
        await mine.close()
