"""Contract: the activity queue (leases, fenced completions, renewals)."""

from __future__ import annotations

import asyncio

from duratask.history import TaskFailed
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.models import TaskFailureDetails
from duratask.storage.base import ActivityCompletion, ActivityTask, Storage

from .builders import (
    LONG,
    SHORT,
    activity,
    commit_of,
    completion,
    expire,
    lease_only,
    message,
    raised,
    running,
    utcnow,
)


async def _schedule(storage: Storage, instance_id: str, tasks: list[ActivityTask]) -> None:
    """Have ``instance_id`` (already running) schedule ``tasks`` in its next episode."""
    await storage.enqueue([message(instance_id, raised("go"))])
    lease = await lease_only(storage)
    assert await storage.commit_orchestrations([commit_of(lease, activities=tasks)]) == [True]


async def test_lease_hands_out_activities_in_order_once(storage: Storage) -> None:
    await running(storage, "a")
    tasks = [activity("a", n) for n in range(5)]
    await _schedule(storage, "a", tasks)

    assert await storage.lease_activities(0, LONG) == []
    first = await storage.lease_activities(3, LONG)
    second = await storage.lease_activities(3, LONG)

    assert [lease.task for lease in first] == tasks[:3]
    assert [lease.task for lease in second] == tasks[3:]
    assert all(lease.attempt == 1 for lease in first + second)
    assert len({lease.token for lease in first + second}) == 5
    assert await storage.lease_activities(3, LONG) == []


async def test_completion_delivers_the_result_to_the_instance(storage: Storage) -> None:
    await running(storage, "a")
    await _schedule(storage, "a", [activity("a", 0)])
    (leased,) = await storage.lease_activities(10, LONG)
    done = completion(leased, '"42"')

    assert await storage.complete_activities([done]) == [True]

    lease = await lease_only(storage)
    assert lease.new_events == [done.event]
    assert await storage.lease_activities(10, LONG) == []


async def test_a_duplicate_completion_is_rejected_and_not_delivered_twice(storage: Storage) -> None:
    await running(storage, "a")
    await _schedule(storage, "a", [activity("a", 0)])
    (leased,) = await storage.lease_activities(10, LONG)

    assert await storage.complete_activities([completion(leased), completion(leased)]) == [True, False]
    assert await storage.complete_activities([completion(leased)]) == [False]

    assert len((await lease_only(storage)).new_events) == 1


async def test_an_expired_activity_is_leased_again_and_the_old_token_fenced_out(storage: Storage) -> None:
    await running(storage, "a")
    await _schedule(storage, "a", [activity("a", 0)])
    (stale,) = await storage.lease_activities(10, SHORT)
    await expire()

    assert await storage.complete_activities([completion(stale)]) == [False]
    assert await storage.renew_activity_lease(stale.activity_id, stale.token, LONG) is False
    (fresh,) = await storage.lease_activities(10, LONG)
    assert fresh.activity_id == stale.activity_id
    assert fresh.token != stale.token
    assert fresh.attempt == 2
    assert await storage.complete_activities([completion(stale)]) == [False]
    assert await storage.complete_activities([completion(fresh)]) == [True]
    assert len((await lease_only(storage)).new_events) == 1


async def test_a_wrong_token_is_rejected_and_the_activity_stays(storage: Storage) -> None:
    await running(storage, "a")
    await _schedule(storage, "a", [activity("a", 0)])
    (leased,) = await storage.lease_activities(10, LONG)

    assert await storage.complete_activities([completion(leased, token="forged")]) == [False]
    unknown = ActivityCompletion(
        activity_id=10**9,
        token=leased.token,
        instance_id="a",
        execution_id="exec-1",
        event=completion(leased).event,
    )
    assert await storage.complete_activities([unknown]) == [False]
    assert await storage.lease_orchestrations(10, LONG) == []
    assert await storage.complete_activities([completion(leased)]) == [True]


async def test_a_result_for_a_finished_or_restarted_execution_is_dropped(storage: Storage) -> None:
    await running(storage, "done")
    await running(storage, "restarted")
    await _schedule(storage, "done", [activity("done", 0)])
    await _schedule(storage, "restarted", [activity("restarted", 0)])
    leases = {lease.task.instance_id: lease for lease in await storage.lease_activities(10, LONG)}
    await storage.enqueue([message("done", raised("end")), message("restarted", raised("again"))])
    for lease in await storage.lease_orchestrations(10, LONG):
        commit = commit_of(
            lease, status=Status.COMPLETED if lease.instance.instance_id == "done" else Status.RUNNING
        )
        if lease.instance.instance_id == "restarted":
            commit.instance.execution_id = "exec-2"
            commit.reset_history = True
        assert await storage.commit_orchestrations([commit]) == [True]

    failure = TaskFailed(
        timestamp=utcnow(), task_scheduled_id=0, failure=TaskFailureDetails(error_type="E", error_message="m")
    )
    late = [
        completion(leases["done"]),
        ActivityCompletion(
            activity_id=leases["restarted"].activity_id,
            token=leases["restarted"].token,
            instance_id="restarted",
            execution_id="exec-1",
            event=failure,
        ),
    ]

    assert await storage.complete_activities(late) == [True, True]  # accepted: the work is finished
    assert await storage.lease_orchestrations(10, LONG) == []  # but nobody receives it
    assert await storage.lease_activities(10, LONG) == []


async def test_a_batch_of_completions_is_fenced_item_by_item(storage: Storage) -> None:
    await running(storage, "a")
    await _schedule(storage, "a", [activity("a", n) for n in range(3)])
    leases = await storage.lease_activities(10, LONG)

    results = await storage.complete_activities(
        [completion(leases[0]), completion(leases[1], token="forged"), completion(leases[2])]
    )

    assert results == [True, False, True]
    assert [e.task_scheduled_id for e in (await lease_only(storage)).new_events] == [0, 2]  # type: ignore[union-attr]


async def test_abandon_makes_an_activity_available_again(storage: Storage) -> None:
    await running(storage, "a")
    await _schedule(storage, "a", [activity("a", 0)])
    (leased,) = await storage.lease_activities(10, LONG)

    await storage.abandon_activity(leased.activity_id, "forged")
    assert await storage.lease_activities(10, LONG) == []
    await storage.abandon_activity(leased.activity_id, leased.token)

    (again,) = await storage.lease_activities(10, LONG)
    assert again.token != leased.token
    assert again.attempt == 2  # attempt counts deliveries
    assert await storage.complete_activities([completion(leased)]) == [False]


async def test_renewal_keeps_a_lease_alive(storage: Storage) -> None:
    await running(storage, "a")
    await _schedule(storage, "a", [activity("a", 0)])
    (leased,) = await storage.lease_activities(10, 0.5)

    assert await storage.renew_activity_lease(leased.activity_id, leased.token, LONG) is True
    assert await storage.renew_activity_lease(leased.activity_id, "forged", LONG) is False
    await asyncio.sleep(0.6)  # past the first expiry

    assert await storage.lease_activities(10, LONG) == []  # still held
    assert await storage.complete_activities([completion(leased)]) == [True]
    assert await storage.renew_activity_lease(leased.activity_id, leased.token, LONG) is False
