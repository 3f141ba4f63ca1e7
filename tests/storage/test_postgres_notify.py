"""PostgreSQL wake-ups across storage objects (as across processes and machines): LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from duratask.notify import ACTIVITIES, ORCHESTRATIONS, instance_topic
from duratask.storage.postgres import PostgresStorage
from tests.pgserver import unique_name

from .builders import LONG, activity, commit_of, completion, create, lease_only, message, raised

WAKE_TIMEOUT = 10.0  # generous: a loaded CI machine; a working wake-up arrives in milliseconds


async def _separate(url: str, hub: str) -> PostgresStorage:
    """A storage object of its own (``open_postgres_storage`` would share one per event loop)."""
    storage = PostgresStorage(url, hub)
    await storage.open()
    return storage


@pytest.fixture
async def pair(pg_url: str) -> AsyncIterator[tuple[PostgresStorage, PostgresStorage]]:
    """Two storages of one hub, each with its own pool and listener, as two processes would have."""
    hub = unique_name("hub")
    one = await _separate(pg_url, hub)
    two = await _separate(pg_url, hub)
    yield one, two
    await one.close()
    await two.close()


async def _wakes(listener: PostgresStorage, change: object, *topics: str) -> None:
    """``change`` (an awaitable) must wake each of ``topics`` on ``listener``."""
    waiters = {topic: listener.notifier.register(topic) for topic in topics}
    await change  # type: ignore[misc]
    for topic, fut in waiters.items():
        assert await listener.notifier.wait(fut, WAKE_TIMEOUT), f"{topic} was not woken"


async def test_a_create_in_one_process_wakes_workers_and_waiters_in_another(
    pair: tuple[PostgresStorage, PostgresStorage],
) -> None:
    one, two = pair
    await _wakes(two, create(one, "a"), ORCHESTRATIONS, instance_topic("a"))


async def test_commits_completions_and_abandons_wake_other_processes(
    pair: tuple[PostgresStorage, PostgresStorage],
) -> None:
    one, two = pair
    await create(one, "a")
    lease = await lease_only(one)
    commit = commit_of(lease, activities=[activity("a", 0), activity("a", 1)])
    await _wakes(two, one.commit_orchestrations([commit]), ACTIVITIES, instance_topic("a"))

    first, second = await two.lease_activities(10, LONG)
    await _wakes(one, two.complete_activities([completion(first)]), ORCHESTRATIONS)
    await _wakes(one, two.abandon_activity(second.activity_id, second.token), ACTIVITIES)

    lease = await lease_only(two)
    await _wakes(one, two.abandon_orchestration("a", lease.token), ORCHESTRATIONS)
    await _wakes(two, one.enqueue([message("a", raised("e"))]), ORCHESTRATIONS)


async def test_a_big_group_commit_reaches_every_instance_waiter(
    pair: tuple[PostgresStorage, PostgresStorage],
) -> None:
    one, two = pair
    ids = [f"{'long-instance-id-' * 8}{n}" for n in range(150)]  # topics far over one NOTIFY payload
    for instance_id in ids:
        await create(one, instance_id)
    leases = await one.lease_orchestrations(len(ids), LONG)
    assert len(leases) == len(ids)
    await _wakes(
        two,
        one.commit_orchestrations([commit_of(lease) for lease in leases]),
        *(instance_topic(instance_id) for instance_id in ids),
    )


async def test_other_task_hubs_are_not_woken(pg_url: str) -> None:
    one = await _separate(pg_url, unique_name("hub"))
    other = await _separate(pg_url, unique_name("hub"))
    same = await _separate(pg_url, one.taskhub)
    try:
        quiet = other.notifier.register(ORCHESTRATIONS, instance_topic("a"))
        await _wakes(same, create(one, "a"), ORCHESTRATIONS)  # once this arrived, other's would have too
        await asyncio.sleep(0.05)
        assert not quiet.done()
        other.notifier.unregister(quiet)
    finally:
        for storage in (one, other, same):
            await storage.close()


async def test_a_storage_is_not_woken_twice_by_its_own_notifications(
    pair: tuple[PostgresStorage, PostgresStorage],
) -> None:
    one, two = pair
    await create(one, "a")
    await _wakes(two, create(one, "b"), ORCHESTRATIONS)  # by now one's own notifications came back too
    late = one.notifier.register(ORCHESTRATIONS)
    await asyncio.sleep(0.05)
    assert not late.done()
    one.notifier.unregister(late)


# --- work the caller took in the same transaction wakes no other process ------------------------


async def _quiet_until(
    listener: PostgresStorage, barrier: object, topic: str, quiet: asyncio.Future[None]
) -> None:
    """``barrier`` (an awaitable) wakes ``topic`` on ``listener``; NOTIFYs arrive in commit order,
    so anything committed before it has arrived too: ``quiet`` must not have been woken."""
    await _wakes(listener, barrier, topic)
    assert not quiet.done()
    listener.notifier.unregister(quiet)


async def test_a_commit_that_leases_all_it_schedules_wakes_no_activity_worker(
    pair: tuple[PostgresStorage, PostgresStorage],
) -> None:
    one, two = pair
    await create(one, "a")
    await create(one, "b")
    lease_a, lease_b = sorted(
        await one.lease_orchestrations(10, LONG), key=lambda lease: lease.instance.instance_id
    )
    quiet = two.notifier.register(ACTIVITIES)
    _, leased = await one.commit_orchestrations_then_lease_activities(
        [commit_of(lease_a, activities=[activity("a", 0)])], 5, LONG
    )
    assert [held.task.instance_id for held in leased] == ["a"]
    # The status change of "a" is still announced (another topic of the same transaction).
    await _quiet_until(two, one.commit_orchestrations([commit_of(lease_b)]), instance_topic("b"), quiet)
    assert await two.lease_activities(10, LONG) == []  # and the activity is the caller's


async def test_a_completion_leases_the_instances_it_delivered_to_before_older_work_and_wakes_nobody(
    pair: tuple[PostgresStorage, PostgresStorage],
) -> None:
    one, two = pair
    await create(one, "a")
    lease = await lease_only(one)
    assert await one.commit_orchestrations([commit_of(lease, activities=[activity("a", 0)])]) == [True]
    (held,) = await one.lease_activities(10, LONG)
    for n in range(3):
        await create(one, f"older-{n}")  # ready before the result: a plain lease would take these first
    await create(one, "b")
    (lease_b,) = await one.lease_orchestrations(1, LONG, id_prefix="b")
    quiet = two.notifier.register(ORCHESTRATIONS)

    applied, leased = await one.complete_activities_then_lease_orchestrations([completion(held)], 1, LONG)

    assert applied == [True]
    assert [next_.instance.instance_id for next_ in leased] == ["a"]
    await _quiet_until(two, one.commit_orchestrations([commit_of(lease_b)]), instance_topic("b"), quiet)


async def test_a_completion_whose_instance_is_held_elsewhere_still_wakes_others(
    pair: tuple[PostgresStorage, PostgresStorage],
) -> None:
    one, two = pair
    await create(one, "a")
    lease = await lease_only(one)
    assert await one.commit_orchestrations([commit_of(lease, activities=[activity("a", 0)])]) == [True]
    (held,) = await one.lease_activities(10, LONG)
    await one.enqueue([message("a", raised("e"))])
    await lease_only(two)  # "a" is busy in the other process

    async def complete() -> None:
        _, leased = await one.complete_activities_then_lease_orchestrations([completion(held)], 5, LONG)
        assert leased == []

    await _wakes(two, complete(), ORCHESTRATIONS)


async def test_a_lease_takes_instances_another_process_ran_last_after_all_others(
    pair: tuple[PostgresStorage, PostgresStorage],
) -> None:
    one, two = pair
    for instance_id in ("a", "b"):
        await create(one, instance_id)
    leases = await one.lease_orchestrations(10, LONG)
    commits = [commit_of(lease, activities=[activity(lease.instance.instance_id, 0)]) for lease in leases]
    assert await one.commit_orchestrations(commits) == [True, True]
    held = await one.lease_activities(10, LONG)
    assert await one.complete_activities([completion(lease) for lease in held]) == [True, True]
    await create(two, "c")  # ready after the results, and nobody ran them yet
    await create(two, "d")

    # A lease reads twice its limit of the oldest ready messages (here all four) and takes the
    # instances "one" ran last only for what room is left.
    fresh = await two.lease_orchestrations(2, LONG)
    assert sorted(lease.instance.instance_id for lease in fresh) == ["c", "d"]
    assert sorted(lease.instance.instance_id for lease in await two.lease_orchestrations(10, LONG)) == [
        "a",
        "b",
    ]


async def test_a_completion_leaves_an_instance_another_process_ran_to_it_and_wakes_it(
    pair: tuple[PostgresStorage, PostgresStorage],
) -> None:
    one, two = pair
    await create(one, "a")
    lease = await lease_only(one)  # "one" runs "a"
    assert await one.commit_orchestrations([commit_of(lease, activities=[activity("a", 0)])]) == [True]
    (held,) = await two.lease_activities(10, LONG)  # "two" runs its activity
    await create(one, "c")

    async def complete() -> None:
        applied, leased = await two.complete_activities_then_lease_orchestrations([completion(held)], 1, LONG)
        assert applied == [True]
        assert [next_.instance.instance_id for next_ in leased] == ["c"]

    await _wakes(one, complete(), ORCHESTRATIONS)
    assert (await lease_only(one)).instance.instance_id == "a"
