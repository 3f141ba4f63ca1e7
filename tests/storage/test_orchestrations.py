"""Contract: orchestration leases and commits (fencing, expiry, group commit)."""

from __future__ import annotations

import asyncio

from duratask.history import (
    ContinueAsNew,
    EventSent,
    ExecutionStarted,
    SubOrchestrationInstanceCompleted,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.storage.base import InstanceFilter, Storage

from .builders import (
    LONG,
    SHORT,
    activity,
    commit_of,
    create,
    expire,
    finished,
    lease_all,
    lease_only,
    message,
    new_instance,
    raised,
    running,
    seconds,
    utcnow,
)


async def test_a_lease_hands_out_visible_messages_under_a_fresh_token(storage: Storage) -> None:
    new = await create(storage, "a")
    before = utcnow()

    lease = await lease_only(storage, lease_seconds=30)

    assert lease.instance == new.record
    assert lease.new_events == [new.started]
    assert lease.history_length == 0
    assert len(lease.token) >= 16
    assert before + seconds(29) < lease.expires_at <= utcnow() + seconds(30)


async def test_a_held_lease_is_not_handed_out_again(storage: Storage) -> None:
    await create(storage, "a")
    await lease_only(storage)
    await storage.enqueue([message("a", raised("while-leased"))])

    assert await storage.lease_orchestrations(10, LONG) == []


async def test_lease_respects_the_limit(storage: Storage) -> None:
    for n in range(5):
        await create(storage, f"i{n}")

    assert await storage.lease_orchestrations(0, LONG) == []
    first = await storage.lease_orchestrations(3, LONG)
    rest = await storage.lease_orchestrations(3, LONG)

    assert len(first) == 3 and len(rest) == 2
    assert {lease.instance.instance_id for lease in first + rest} == {f"i{n}" for n in range(5)}


async def test_commit_appends_history_updates_the_instance_and_consumes_messages(storage: Storage) -> None:
    new = await create(storage, "a")
    await storage.enqueue([message("a", raised("e1"))])
    lease = await lease_only(storage)
    scheduled = TaskScheduled(timestamp=utcnow(), event_id=0, name="act")
    commit = commit_of(lease, history=[*lease.new_events, scheduled])
    commit.instance.custom_status = '"step 1"'
    commit.instance.input = '"input"'

    assert await storage.commit_orchestrations([commit]) == [True]

    assert await storage.get_history("a") == [new.started, lease.new_events[1], scheduled]
    assert await storage.get_instance("a") == commit.instance
    assert await storage.lease_orchestrations(10, LONG) == []  # messages consumed

    await storage.enqueue([message("a", raised("e2"))])
    second = await lease_only(storage)
    assert second.history_length == 3
    assert [e.name for e in second.new_events] == ["e2"]  # type: ignore[union-attr]
    later = TaskScheduled(timestamp=utcnow(), event_id=1, name="act2")
    assert await storage.commit_orchestrations([commit_of(second, history=[later])]) == [True]
    assert await storage.get_history("a") == [new.started, lease.new_events[1], scheduled, later]


async def test_a_commit_with_a_stale_token_changes_nothing(storage: Storage) -> None:
    await create(storage, "a")
    lease = await lease_only(storage)
    before = await storage.get_instance("a")

    results = await storage.commit_orchestrations(
        [commit_of(lease, status=Status.COMPLETED, token="not-the-token", activities=[activity("a", 0)])]
    )

    assert results == [False]
    assert await storage.get_instance("a") == before
    assert await storage.get_history("a") == []
    assert await storage.lease_activities(10, LONG) == []
    assert await storage.commit_orchestrations([commit_of(lease)]) == [True]  # the real token still works


async def test_an_expired_lease_is_fenced_out_and_its_messages_delivered_again(storage: Storage) -> None:
    new = await create(storage, "a")
    stale = await lease_only(storage, lease_seconds=SHORT)
    await expire()
    event = raised("meanwhile")
    await storage.enqueue([message("a", event)])

    assert await storage.commit_orchestrations([commit_of(stale, status=Status.COMPLETED)]) == [False]
    assert (await storage.get_instance("a")).status is Status.PENDING  # type: ignore[union-attr]
    assert await storage.get_history("a") == []

    fresh = await lease_only(storage)
    assert fresh.token != stale.token
    assert fresh.new_events == [new.started, event]
    await storage.abandon_orchestration("a", stale.token)  # a late abandon of the old lease: no effect
    assert await storage.lease_orchestrations(10, LONG) == []
    assert await storage.commit_orchestrations([commit_of(fresh)]) == [True]


async def test_an_expired_lease_is_fenced_out_even_before_anyone_else_leases(storage: Storage) -> None:
    await create(storage, "a")
    stale = await lease_only(storage, lease_seconds=SHORT)
    await expire()

    assert await storage.commit_orchestrations([commit_of(stale)]) == [False]
    assert (await lease_only(storage)).history_length == 0


async def test_messages_arriving_during_a_lease_wait_for_the_next_one(storage: Storage) -> None:
    await create(storage, "a")
    lease = await lease_only(storage)
    late = raised("late")
    await storage.enqueue([message("a", late)])

    assert await storage.commit_orchestrations([commit_of(lease)]) == [True]

    assert len(await storage.get_history("a")) == 1
    nxt = await lease_only(storage)
    assert nxt.new_events == [late]
    assert nxt.history_length == 1


async def test_a_timer_set_by_a_commit_waits_until_it_is_due(storage: Storage) -> None:
    await create(storage, "a")
    lease = await lease_only(storage)
    fire_at = utcnow() + seconds(60)
    fired = TimerFired(timestamp=fire_at, fire_at=fire_at, timer_id=0)
    commit = commit_of(lease, messages=[message("a", fired, fire_at)])
    assert await storage.commit_orchestrations([commit]) == [True]

    assert await storage.lease_orchestrations(10, LONG) == []
    assert await storage.next_visible_at() == fire_at


async def test_a_timer_set_by_a_commit_fires_when_due(storage: Storage) -> None:
    await create(storage, "a")
    lease = await lease_only(storage)
    fire_at = utcnow() + seconds(0.1)
    created = TimerCreated(timestamp=utcnow(), event_id=0, fire_at=fire_at)
    fired = TimerFired(timestamp=fire_at, fire_at=fire_at, timer_id=0)
    commit = commit_of(lease, history=[*lease.new_events, created], messages=[message("a", fired, fire_at)])
    assert await storage.commit_orchestrations([commit]) == [True]

    await asyncio.sleep(0.15)
    assert await storage.next_visible_at() is None
    assert (await lease_only(storage)).new_events == [fired]


async def test_continue_as_new_resets_the_history(storage: Storage) -> None:
    first = await running(storage, "a")
    await storage.enqueue([message("a", raised("go"))])
    lease = await lease_only(storage)
    restarted = ExecutionStarted(
        timestamp=utcnow(), name="orchestrator", instance_id="a", execution_id="exec-2"
    )
    carried = raised("carried-over")
    commit = commit_of(
        lease,
        history=[restarted],
        reset_history=True,
        messages=[message("a", carried)],
    )
    commit.instance.execution_id = "exec-2"
    commit.instance.input = '"new input"'

    assert await storage.commit_orchestrations([commit]) == [True]

    assert await storage.get_history("a") == [restarted]
    assert (await storage.get_instance("a")).execution_id == "exec-2"  # type: ignore[union-attr]
    nxt = await lease_only(storage)
    assert nxt.history_length == 1 and nxt.new_events == [carried]
    assert first.token != nxt.token


async def test_commit_sends_messages_and_drops_those_for_unknown_instances(storage: Storage) -> None:
    await create(storage, "sender")
    await running(storage, "receiver")
    lease = await lease_only(storage)
    sent = raised("hello", '"hi"')
    history = [
        *lease.new_events,
        EventSent(timestamp=utcnow(), event_id=0, instance_id="receiver", name="hello"),
    ]
    commit = commit_of(lease, history=history, messages=[message("receiver", sent), message("ghost", sent)])

    assert await storage.commit_orchestrations([commit]) == [True]

    leases = await lease_all(storage)
    assert set(leases) == {"receiver"}
    assert leases["receiver"].new_events == [sent]
    assert await storage.get_instance("ghost") is None


async def test_commit_creates_sub_orchestrations_unless_one_is_unfinished(storage: Storage) -> None:
    await running(storage, "busy-child")
    await finished(storage, "done-child", execution_id="old")
    await create(storage, "parent")
    lease = await lease_only(storage)
    fresh = new_instance("fresh-child", parent="parent")
    busy = new_instance("busy-child", parent="parent", execution_id="would-replace")
    done = new_instance("done-child", parent="parent", execution_id="new")
    greeting = raised("greeting")
    commit = commit_of(lease, new_instances=[fresh, busy, done], messages=[message("fresh-child", greeting)])

    assert await storage.commit_orchestrations([commit]) == [True]

    assert await storage.get_instance("fresh-child") == fresh.record
    assert (await storage.get_instance("busy-child")).execution_id == "exec-1"  # type: ignore[union-attr]
    assert await storage.get_instance("done-child") == done.record
    assert await storage.get_history("done-child") == []
    assert sorted(await storage.child_instance_ids("parent")) == ["done-child", "fresh-child"]
    leases = await lease_all(storage)
    assert set(leases) == {"fresh-child", "done-child"}
    # A message to a child created in the same episode finds it.
    assert leases["fresh-child"].new_events == [fresh.started, greeting]
    assert leases["done-child"].new_events == [done.started]


async def test_commit_schedules_activities(storage: Storage) -> None:
    await create(storage, "a")
    lease = await lease_only(storage)
    tasks = [activity("a", 0, name="first"), activity("a", 1, name="second")]

    assert await storage.commit_orchestrations([commit_of(lease, activities=tasks)]) == [True]

    leased = await storage.lease_activities(10, LONG)
    assert [a.task for a in leased] == tasks


async def test_a_batch_fences_each_commit_on_its_own(storage: Storage) -> None:
    for name in ("ok-1", "stale", "ok-2", "gone"):
        await create(storage, name)
    leases = await lease_all(storage)
    stale_done = commit_of(leases["stale"], token="wrong", status=Status.COMPLETED)
    await storage.abandon_orchestration("gone", leases["gone"].token)

    results = await storage.commit_orchestrations(
        [
            commit_of(leases["ok-1"], status=Status.COMPLETED),
            stale_done,
            commit_of(leases["ok-2"]),
            commit_of(leases["gone"]),
            commit_of(leases["ok-1"]),  # the same lease twice: the second is already settled
        ]
    )

    assert results == [True, False, True, False, False]
    statuses = {r.instance_id: r.status for r in await storage.query_instances(InstanceFilter(), 10, None)}
    assert statuses == {
        "ok-1": Status.COMPLETED,
        "stale": Status.PENDING,
        "ok-2": Status.RUNNING,
        "gone": Status.PENDING,
    }


async def test_a_repeated_commit_is_rejected(storage: Storage) -> None:
    await create(storage, "a")
    lease = await lease_only(storage)
    assert await storage.commit_orchestrations([commit_of(lease)]) == [True]

    assert await storage.commit_orchestrations([commit_of(lease, status=Status.FAILED)]) == [False]
    assert (await storage.get_instance("a")).status is Status.RUNNING  # type: ignore[union-attr]
    assert len(await storage.get_history("a")) == 1


async def test_a_commit_for_a_purged_instance_is_rejected(storage: Storage) -> None:
    await finished(storage, "a")
    await storage.enqueue([message("a", raised("late"))])
    lease = await lease_only(storage)
    assert await storage.delete_instances(["a"]) == 1

    assert await storage.commit_orchestrations([commit_of(lease, status=Status.COMPLETED)]) == [False]
    assert await storage.get_instance("a") is None


async def test_abandon_releases_the_lease_and_redelivers(storage: Storage) -> None:
    new = await create(storage, "a")
    lease = await lease_only(storage)
    late = raised("late")
    await storage.enqueue([message("a", late)])

    await storage.abandon_orchestration("a", "wrong-token")
    assert await storage.lease_orchestrations(10, LONG) == []
    await storage.abandon_orchestration("a", lease.token)

    again = await lease_only(storage)
    assert again.new_events == [new.started, late]
    assert again.token != lease.token
    assert await storage.commit_orchestrations([commit_of(lease)]) == [False]


async def test_concurrent_leasers_on_one_storage_never_share_an_instance(storage: Storage) -> None:
    for n in range(40):
        await create(storage, f"i{n}")

    batches = await asyncio.gather(*(storage.lease_orchestrations(3, LONG) for _ in range(20)))
    ids = [lease.instance.instance_id for batch in batches for lease in batch]
    # Concurrent leasers may come back short (a storage may skip what another is locking), never doubled.
    while rest := await storage.lease_orchestrations(10, LONG):
        ids += [lease.instance.instance_id for lease in rest]

    assert sorted(ids) == sorted(f"i{n}" for n in range(40))


async def test_a_sub_orchestration_result_reaches_its_parent(storage: Storage) -> None:
    await running(storage, "parent")
    child = await running(storage, "child", parent="parent")
    await storage.enqueue([message("child", raised("finish"))])
    lease = await lease_only(storage)
    result = SubOrchestrationInstanceCompleted(timestamp=utcnow(), task_scheduled_id=3, result='"r"')
    commit = commit_of(lease, status=Status.COMPLETED, messages=[message("parent", result)])
    commit.instance.output = '"r"'

    assert await storage.commit_orchestrations([commit]) == [True]

    assert (await lease_only(storage)).new_events == [result]
    assert child.instance.parent_instance_id == "parent"


async def test_continue_as_new_event_round_trips(storage: Storage) -> None:
    await create(storage, "a")
    lease = await lease_only(storage)
    event = ContinueAsNew(timestamp=utcnow(), input='"x"')
    assert await storage.commit_orchestrations([commit_of(lease, history=[event])]) == [True]
    assert await storage.get_history("a") == [event]


async def test_a_renewed_lease_outlives_its_first_expiry_and_a_lost_one_is_not_renewed(storage: Storage) -> None:
    await create(storage, "a")
    (lease,) = await storage.lease_orchestrations(10, 1.0)
    assert await storage.renew_orchestration_lease("a", "not-the-token", 30) is False
    assert await storage.renew_orchestration_lease("a", lease.token, 30) is True

    await asyncio.sleep(1.2)  # past the first expiry: the renewal holds it
    assert await storage.lease_orchestrations(10, 30) == []
    assert await storage.commit_orchestrations([commit_of(lease)]) == [True]
    assert await storage.renew_orchestration_lease("a", lease.token, 30) is False  # released by the commit


async def test_an_expired_lease_cannot_be_renewed(storage: Storage) -> None:
    await create(storage, "a")
    (lease,) = await storage.lease_orchestrations(10, 0.2)
    await asyncio.sleep(0.4)
    assert await storage.renew_orchestration_lease("a", lease.token, 30) is False
    (again,) = await storage.lease_orchestrations(10, 30)  # free for anyone, with its messages
    assert again.token != lease.token and again.new_events == lease.new_events
