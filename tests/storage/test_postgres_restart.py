"""A PostgreSQL restart (clean or crash) in the middle of work: calls retry, listeners reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.notify import ACTIVITIES, ORCHESTRATIONS, instance_topic
from duratask.storage.base import InstanceFilter
from duratask.storage.postgres import PostgresStorage
from tests.pgserver import PostgresServer

from .builders import LONG, activity, commit_of, completion, create, lease_only, message, raised

TIMEOUT = 30.0


@pytest.fixture
async def two(pg_private_server: PostgresServer) -> AsyncIterator[tuple[PostgresStorage, PostgresStorage]]:
    """Two storages of one hub on a server of the test's own (it will be restarted)."""
    url = pg_private_server.create_database()
    one = PostgresStorage(url, "hub", max_connections=4, retry_seconds=TIMEOUT)
    other = PostgresStorage(url, "hub", max_connections=4, retry_seconds=TIMEOUT)
    await one.open()
    await other.open()
    yield one, other
    await one.close()
    await other.close()


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)


async def _restart(server: PostgresServer, mode: str, down_seconds: float = 0.0) -> None:
    await asyncio.to_thread(server.restart, mode, down_seconds)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_work_goes_on_after_a_restart(
    pg_private_server: PostgresServer, two: tuple[PostgresStorage, PostgresStorage], mode: str
) -> None:
    one, other = two
    await create(one, "a")
    lease = await lease_only(one)
    # Every pooled connection of both storages and both listeners break here.
    listened = other.listener_connections
    await _restart(pg_private_server, mode)

    # The first calls after the restart run on broken connections: they are retried on new ones.
    assert await one.commit_orchestrations([commit_of(lease, activities=[activity("a", 0)])]) == [True]
    (task,) = await other.lease_activities(5, LONG)
    assert await other.complete_activities([completion(task)]) == [True]
    assert len(await one.get_history("a")) == 1

    # The listener reconnects by itself and hears commits again.
    await _until(lambda: other.listener_connections > listened)
    woken = other.notifier.register(instance_topic("a"))
    lease = await lease_only(one)
    assert await one.commit_orchestrations([commit_of(lease, status=Status.COMPLETED)]) == [True]
    assert await other.notifier.wait(woken, TIMEOUT)


async def test_a_write_that_is_not_replay_safe_survives_a_restart_exactly_once(
    pg_private_server: PostgresServer, two: tuple[PostgresStorage, PostgresStorage]
) -> None:
    one, _ = two
    await create(one, "a")
    lease = await lease_only(one)
    assert await one.commit_orchestrations([commit_of(lease)]) == [True]
    await _restart(pg_private_server, "immediate")

    # The pooled connection is dead: the enqueue fails before its COMMIT, and is retried.
    event = raised("after-restart")
    await one.enqueue([message("a", event)])
    assert (await lease_only(one)).new_events == [event]


async def test_a_reconnected_listener_wakes_its_workers_once(
    pg_private_server: PostgresServer, two: tuple[PostgresStorage, PostgresStorage]
) -> None:
    _, other = two
    # Notifications sent while the listener was away are lost: workers must look for work.
    woken = other.notifier.register(ORCHESTRATIONS, ACTIVITIES)
    await _restart(pg_private_server, "fast", down_seconds=0.5)
    await _until(lambda: other.listener_connections == 2)
    assert await other.notifier.wait(woken, TIMEOUT)


async def test_calls_made_while_the_server_is_down_complete_once_it_is_back(
    pg_private_server: PostgresServer, two: tuple[PostgresStorage, PostgresStorage]
) -> None:
    one, other = two
    await asyncio.to_thread(pg_private_server.stop, "immediate")
    # A read, a write that never reached the server, and a fenced write, all issued while down.
    read = asyncio.ensure_future(one.get_instance("a"))
    write = asyncio.ensure_future(create(other, "b"))
    lease = asyncio.ensure_future(one.lease_orchestrations(5, LONG))
    await asyncio.sleep(1.0)
    assert not (read.done() or write.done() or lease.done())

    await asyncio.to_thread(pg_private_server.start)
    assert await asyncio.wait_for(read, TIMEOUT) is None
    await asyncio.wait_for(write, TIMEOUT)
    await asyncio.wait_for(lease, TIMEOUT)
    # Exactly one "b": the create did not run twice.
    assert [r.instance_id for r in await one.query_instances(InstanceFilter(), 10, None)] == ["b"]
    await _until(lambda: other.listener_connections == 2)


async def test_a_server_that_stays_down_fails_calls_after_the_retry_budget(
    pg_private_server: PostgresServer,
) -> None:
    url = pg_private_server.create_database()
    storage = PostgresStorage(url, "hub", retry_seconds=1.0)
    await storage.open()
    try:
        await asyncio.to_thread(pg_private_server.stop, "fast")
        with pytest.raises(Exception) as failure:
            await asyncio.wait_for(storage.get_instance("a"), TIMEOUT)
        assert "connection" in str(failure.value).lower() or "timeout" in type(failure.value).__name__.lower()
    finally:
        await storage.close()
