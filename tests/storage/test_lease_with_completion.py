"""Contract: a completion and the lease of the work it made ready, in one call
(``storage.base.commit_then_lease_activities`` / ``complete_then_lease_orchestrations``).

Every storage gives the same outcome as the two calls one after the other; a storage that does
both in one transaction also wakes nobody for the work its caller took.
"""

from __future__ import annotations

import asyncio

from duratask.notify import ACTIVITIES
from duratask.storage.base import (
    Storage,
    commit_then_lease_activities,
    complete_then_lease_orchestrations,
)

from .builders import LONG, activity, commit_of, completion, create, lease_only, message, raised, running


async def _go(storage: Storage, instance_id: str) -> None:
    await storage.enqueue([message(instance_id, raised("go"))])


def _in_one_transaction(storage: Storage) -> bool:
    return hasattr(storage, "commit_orchestrations_then_lease_activities")


async def test_a_commit_leases_the_activities_it_scheduled(storage: Storage) -> None:
    await running(storage, "a")
    await _go(storage, "a")
    lease = await lease_only(storage)
    tasks = [activity("a", 0), activity("a", 1), activity("a", 2)]
    woken = storage.notifier.register(ACTIVITIES)

    applied, leased = await commit_then_lease_activities(
        storage, [commit_of(lease, activities=tasks)], 2, LONG
    )
    await asyncio.sleep(0.05)  # a wake-up is a callback on the loop (PostgreSQL: a NOTIFY)

    assert applied == [True]
    assert [held.task for held in leased] == tasks[:2]
    assert woken.done()  # the third is left for others, who must hear of it
    storage.notifier.unregister(woken)
    (rest,) = await storage.lease_activities(10, LONG)
    assert rest.task == tasks[2]
    assert await storage.lease_activities(10, LONG) == []


async def test_taking_every_scheduled_activity_wakes_nobody(storage: Storage) -> None:
    if not _in_one_transaction(storage):
        return  # two transactions: the commit wakes workers before the lease takes the work
    await running(storage, "a")
    await _go(storage, "a")
    lease = await lease_only(storage)
    woken = storage.notifier.register(ACTIVITIES)

    _, leased = await commit_then_lease_activities(
        storage, [commit_of(lease, activities=[activity("a", 0)])], 5, LONG
    )
    await asyncio.sleep(0.05)

    assert len(leased) == 1
    assert not woken.done()
    storage.notifier.unregister(woken)


async def test_a_fenced_out_commit_leases_what_is_there_and_changes_nothing(storage: Storage) -> None:
    await running(storage, "a")
    await _go(storage, "a")
    lease = await lease_only(storage)

    applied, leased = await commit_then_lease_activities(
        storage, [commit_of(lease, activities=[activity("a", 0)], token="stale")], 5, LONG
    )

    assert applied == [False]
    assert leased == []
    assert await storage.commit_orchestrations([commit_of(lease)]) == [True]  # the real lease holds


async def test_a_completion_leases_the_instance_it_delivered_to(storage: Storage) -> None:
    await running(storage, "a")
    await _go(storage, "a")
    lease = await lease_only(storage)
    assert await storage.commit_orchestrations([commit_of(lease, activities=[activity("a", 0)])]) == [True]
    (held,) = await storage.lease_activities(10, LONG)
    done = completion(held, '"42"')

    applied, leased = await complete_then_lease_orchestrations(storage, [done], 10, LONG)

    assert applied == [True]
    assert [(next_.instance.instance_id, next_.new_events) for next_ in leased] == [("a", [done.event])]
    assert await storage.lease_orchestrations(10, LONG) == []  # held by the caller now
    assert await storage.commit_orchestrations([commit_of(leased[0])]) == [True]


async def test_a_fenced_out_completion_delivers_nothing_and_leases_like_any_lease(storage: Storage) -> None:
    await running(storage, "a")
    await _go(storage, "a")
    lease = await lease_only(storage)
    assert await storage.commit_orchestrations([commit_of(lease, activities=[activity("a", 0)])]) == [True]
    (held,) = await storage.lease_activities(10, LONG)
    await create(storage, "b")  # visible work of another instance

    applied, leased = await complete_then_lease_orchestrations(
        storage, [completion(held, token="not-the-lease")], 10, LONG
    )

    assert applied == [False]  # fenced out: nothing delivered to "a", which has nothing to do
    assert [next_.instance.instance_id for next_ in leased] == ["b"]
    assert await storage.complete_activities([completion(held)]) == [True]  # the real lease holds
    assert (await lease_only(storage)).instance.instance_id == "a"
