"""Contract: after a change, the storage's notifier wakes waiters of the matching topics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.notify import ACTIVITIES, ORCHESTRATIONS, instance_topic
from duratask.storage.base import Storage

from .builders import (
    LONG,
    activity,
    commit_of,
    completion,
    create,
    lease_all,
    lease_only,
    message,
    raised,
    running,
    seconds,
    utcnow,
)


async def _woken(storage: Storage, change: Awaitable[object], *topics: str) -> dict[str, bool]:
    """Which of ``topics`` the change woke (each checked right after it returned)."""
    waiters = {topic: storage.notifier.register(topic) for topic in topics}
    await change
    await asyncio.sleep(0)  # let call_soon_threadsafe callbacks run
    woken = {topic: fut.done() for topic, fut in waiters.items()}
    for fut in waiters.values():
        storage.notifier.unregister(fut)
    return woken


async def test_create_wakes_orchestration_workers_and_instance_waiters(storage: Storage) -> None:
    woken = await _woken(storage, create(storage, "a"), ORCHESTRATIONS, instance_topic("a"), ACTIVITIES)
    assert woken == {ORCHESTRATIONS: True, instance_topic("a"): True, ACTIVITIES: False}


async def test_enqueue_wakes_orchestration_workers(storage: Storage) -> None:
    await create(storage, "a")
    woken = await _woken(storage, storage.enqueue([message("a", raised("x"))]), ORCHESTRATIONS)
    assert woken == {ORCHESTRATIONS: True}


async def test_a_commit_wakes_its_instance_and_the_queues_it_fed(storage: Storage) -> None:
    await create(storage, "a")
    await create(storage, "b")
    lease = (await storage.lease_orchestrations(1, LONG))[0]
    other = "b" if lease.instance.instance_id == "a" else "a"
    me = lease.instance.instance_id

    quiet = await _woken(
        storage,
        storage.commit_orchestrations([commit_of(lease)]),
        ORCHESTRATIONS,
        ACTIVITIES,
        instance_topic(me),
        instance_topic(other),
    )
    assert quiet == {
        ORCHESTRATIONS: False,
        ACTIVITIES: False,
        instance_topic(me): True,
        instance_topic(other): False,
    }

    await storage.enqueue([message(me, raised("go"))])
    lease = (await lease_all(storage))[me]
    busy = await _woken(
        storage,
        storage.commit_orchestrations(
            [commit_of(lease, activities=[activity(me, 0)], messages=[message(other, raised("hi"))])]
        ),
        ORCHESTRATIONS,
        ACTIVITIES,
    )
    assert busy == {ORCHESTRATIONS: True, ACTIVITIES: True}


async def test_a_commit_wakes_workers_when_messages_arrived_during_its_lease(storage: Storage) -> None:
    await create(storage, "a")
    lease = await lease_only(storage)
    await storage.enqueue([message("a", raised("meanwhile"))])

    woken = await _woken(storage, storage.commit_orchestrations([commit_of(lease)]), ORCHESTRATIONS)
    assert woken == {ORCHESTRATIONS: True}


async def test_a_timer_wakes_workers_so_they_recompute_their_sleep(storage: Storage) -> None:
    await create(storage, "a")
    lease = await lease_only(storage)
    fire_at = utcnow() + seconds(60)
    commit = commit_of(lease, messages=[message("a", raised("timer"), fire_at)])

    woken = await _woken(storage, storage.commit_orchestrations([commit]), ORCHESTRATIONS)
    assert woken == {ORCHESTRATIONS: True}


async def test_a_rejected_commit_wakes_nobody(storage: Storage) -> None:
    await create(storage, "a")
    lease = await lease_only(storage)
    commit = commit_of(lease, token="forged", activities=[activity("a", 0)])

    woken = await _woken(
        storage, storage.commit_orchestrations([commit]), ORCHESTRATIONS, ACTIVITIES, instance_topic("a")
    )
    assert woken == {ORCHESTRATIONS: False, ACTIVITIES: False, instance_topic("a"): False}


async def test_activity_completion_and_abandon_wake_the_right_workers(storage: Storage) -> None:
    await running(storage, "a")
    await storage.enqueue([message("a", raised("go"))])
    lease = await lease_only(storage)
    await storage.commit_orchestrations([commit_of(lease, activities=[activity("a", 0), activity("a", 1)])])
    first, second = await storage.lease_activities(10, LONG)

    assert await _woken(storage, storage.complete_activities([completion(first)]), ORCHESTRATIONS) == {
        ORCHESTRATIONS: True
    }
    assert await _woken(storage, storage.abandon_activity(second.activity_id, second.token), ACTIVITIES) == {
        ACTIVITIES: True
    }


async def test_abandoning_an_orchestration_wakes_workers(storage: Storage) -> None:
    await create(storage, "a")
    lease = await lease_only(storage)
    woken = await _woken(storage, storage.abandon_orchestration("a", lease.token), ORCHESTRATIONS)
    assert woken == {ORCHESTRATIONS: True}


async def test_purge_wakes_instance_waiters(storage: Storage) -> None:
    await running(storage, "a")
    await storage.enqueue([message("a", raised("end"))])
    lease = await lease_only(storage)
    await storage.commit_orchestrations([commit_of(lease, status=Status.COMPLETED)])
    woken = await _woken(storage, storage.delete_instances(["a"]), instance_topic("a"))
    assert woken == {instance_topic("a"): True}
