"""Contract: moving whole instances out of a task hub and into another (export / import)."""

from __future__ import annotations

import msgspec
import pytest

from duratask.history import TaskScheduled, TimerCreated, TimerFired
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.models import TaskFailureDetails
from duratask.storage.base import ImportConflictError, InstanceDump, Storage

from .builders import (
    LONG,
    activity,
    commit_of,
    completion,
    create,
    finished,
    lease_all,
    lease_only,
    message,
    raised,
    running,
    seconds,
    utcnow,
)
from .conftest import OpenStorage


async def export_all(storage: Storage, page: int = 1000) -> list[InstanceDump]:
    dumps: list[InstanceDump] = []
    after: str | None = None
    while True:
        got = await storage.export_instances(after, page)
        dumps += got
        if len(got) < page:
            return dumps
        after = got[-1].instance.instance_id


async def busy_instance(storage: Storage, instance_id: str) -> None:
    """A running instance with a history, two queued activities, a timer and an event waiting."""
    await running(storage, instance_id)
    await storage.enqueue([message(instance_id, raised("go", '"x"'))])
    lease = await lease_only(storage)
    fire_at = utcnow() + seconds(3600)
    history = [
        *lease.new_events,
        TaskScheduled(timestamp=utcnow(), event_id=0, name="act"),
        TaskScheduled(timestamp=utcnow(), event_id=1, name="act"),
        TimerCreated(timestamp=utcnow(), event_id=2, fire_at=fire_at),
    ]
    timer = message(
        instance_id, TimerFired(timestamp=utcnow(), fire_at=fire_at, timer_id=2), visible_at=fire_at
    )
    commit = commit_of(
        lease,
        history=history,
        activities=[activity(instance_id, 0), activity(instance_id, 1)],
        messages=[timer],
    )
    commit.instance.custom_status = '"busy"'
    assert await storage.commit_orchestrations([commit]) == [True]
    await storage.enqueue([message(instance_id, raised("later", '"y"'))])


async def test_an_empty_hub_exports_nothing(storage: Storage) -> None:
    assert await storage.export_instances(None, 10) == []
    assert await storage.export_instances("zzz", 10) == []
    assert await storage.import_instances([]) == 0


async def test_export_holds_the_record_history_inbox_and_activities_in_order(storage: Storage) -> None:
    await busy_instance(storage, "busy")

    (dump,) = await storage.export_instances(None, 10)

    assert dump.instance == await storage.get_instance("busy")
    assert dump.history == await storage.get_history("busy")
    assert [type(m.event).__name__ for m in dump.inbox] == ["TimerFired", "EventRaised"]
    assert dump.inbox[0].visible_at > utcnow() + seconds(3000)
    assert [(a.task_id, a.name, a.input, a.attempt) for a in dump.activities] == [
        (0, "act", '"in-0"', 0),
        (1, "act", '"in-1"', 0),
    ]
    assert all(a.execution_id == "exec-1" for a in dump.activities)


async def test_export_pages_by_instance_id_in_code_point_order(storage: Storage) -> None:
    ids = ["b", "a", "B", "a/b", "é", "a b", "Z", "ab", "😀", "a%"]
    for instance_id in ids:
        await create(storage, instance_id)

    first = await storage.export_instances(None, 4)
    rest = await storage.export_instances(first[-1].instance.instance_id, 100)
    everything = [d.instance.instance_id for d in first + rest]

    assert len(first) == 4
    assert everything == sorted(ids)
    assert await storage.export_instances(everything[-1], 100) == []


async def test_import_recreates_instances_exactly(open_storage: OpenStorage) -> None:
    source, target = await open_storage("source"), await open_storage("target")
    await busy_instance(source, "busy")
    await finished(source, "done")
    await finished(source, "failed", status=Status.FAILED)
    await create(source, "later", visible_at=utcnow() + seconds(3600))
    await running(source, "child", parent="busy")
    exported = await export_all(source)

    assert await target.import_instances(exported) == 5

    assert await export_all(target) == exported
    assert await target.child_instance_ids("busy") == ["child"]
    assert await source.export_instances(None, 100) == exported  # the source is left as it was


async def test_every_record_field_survives(open_storage: OpenStorage) -> None:
    source, target = await open_storage("source"), await open_storage("target")
    await finished(source, "f", status=Status.FAILED)
    (dump,) = await source.export_instances(None, 10)
    inner = TaskFailureDetails(error_type="KeyError", error_message="k")
    dump.instance = msgspec.structs.replace(
        dump.instance,
        input='{"in": 1}',
        output='"out"',
        custom_status='"cs"',
        failure=TaskFailureDetails(
            error_type="ValueError", error_message="v", stack_trace="tb", inner_failure=inner
        ),
        version="1.2",
        parent_instance_id="p",
        parent_task_id=7,
        scheduled_start=utcnow() + seconds(5),
        completed_at=utcnow(),
    )

    await target.import_instances([dump])

    assert await target.export_instances(None, 10) == [dump]


async def test_an_imported_running_instance_carries_on(open_storage: OpenStorage) -> None:
    source, target = await open_storage("source"), await open_storage("target")
    await busy_instance(source, "busy")
    (dump,) = await source.export_instances(None, 10)
    await target.import_instances([dump])

    # The waiting event is delivered; the timer is not due yet.
    lease = await lease_only(target)
    assert lease.history_length == len(dump.history)
    assert [type(e).__name__ for e in lease.new_events] == ["EventRaised"]
    assert lease.instance == dump.instance
    assert await target.next_visible_at() == dump.inbox[0].visible_at
    assert await target.commit_orchestrations([commit_of(lease)]) == [True]
    assert len(await target.get_history("busy")) == len(dump.history) + 1

    # The queued activities run, and their results reach the instance.
    leased = await target.lease_activities(10, LONG)
    assert [a.task.task_id for a in leased] == [0, 1]
    assert all(a.attempt == 1 and a.task.execution_id == "exec-1" for a in leased)
    assert await target.complete_activities([completion(a) for a in leased]) == [True, True]
    lease = await lease_only(target)
    assert [type(e).__name__ for e in lease.new_events] == ["TaskCompleted", "TaskCompleted"]


async def test_leased_work_is_exported_unleased_and_delivered_again(open_storage: OpenStorage) -> None:
    source, target = await open_storage("source"), await open_storage("target")
    await busy_instance(source, "busy")
    held = await lease_only(source)
    held_activities = await source.lease_activities(10, LONG)
    assert len(held_activities) == 2

    (dump,) = await source.export_instances(None, 10)
    await target.import_instances([dump])

    again = await lease_only(target)
    assert again.new_events == held.new_events
    redelivered = await target.lease_activities(10, LONG)
    assert [a.task for a in redelivered] == [a.task for a in held_activities]
    assert [a.attempt for a in redelivered] == [2, 2]  # a delivery before the move counts
    # The source's leases still hold there: the move leaves the source alone.
    assert await source.commit_orchestrations([commit_of(held)]) == [True]


async def test_a_pending_instance_waits_for_its_start_time_after_import(open_storage: OpenStorage) -> None:
    source, target = await open_storage("source"), await open_storage("target")
    start_at = utcnow() + seconds(3600)
    await create(source, "later", visible_at=start_at)
    await target.import_instances(await export_all(source))

    assert await lease_all(target) == {}
    assert await target.next_visible_at() == start_at
    assert (await target.get_instance("later")).status is Status.PENDING  # type: ignore[union-attr]


async def test_an_existing_id_fails_the_whole_batch_naming_it(open_storage: OpenStorage) -> None:
    source, target = await open_storage("source"), await open_storage("target")
    for instance_id in ("a", "b", "c"):
        await finished(source, instance_id)
    await finished(target, "b")
    before = await export_all(target)

    with pytest.raises(ImportConflictError, match="'b'") as caught:
        await target.import_instances(await export_all(source))

    assert caught.value.instance_ids == ["b"]
    assert await export_all(target) == before  # nothing of the batch, not even "a"


async def test_replace_overwrites_existing_instances_and_their_work(open_storage: OpenStorage) -> None:
    source, target = await open_storage("source"), await open_storage("target")
    await finished(source, "x")
    await busy_instance(target, "x")  # running, with activities and messages of its own
    stale = await target.lease_activities(10, LONG)

    assert await target.import_instances(await export_all(source), replace=True) == 1

    (dump,) = await export_all(source)
    assert await export_all(target) == [dump]
    assert await target.complete_activities([completion(a) for a in stale]) == [False, False]
    # Only the imported instance's own queue is left (one activity), and no message.
    assert [a.task.task_id for a in await target.lease_activities(10, LONG)] == [
        a.task_id for a in dump.activities
    ]
    assert await target.lease_orchestrations(10, LONG) == []


async def test_an_id_twice_in_one_batch_is_refused(open_storage: OpenStorage) -> None:
    source, target = await open_storage("source"), await open_storage("target")
    await finished(source, "a")
    await finished(source, "b")
    a, b = await export_all(source)

    with pytest.raises(ValueError, match="'a' appears more than once"):
        await target.import_instances([a, b, a])

    assert await export_all(target) == []


async def test_export_sees_only_its_own_task_hub(open_storage: OpenStorage) -> None:
    one, two = await open_storage("one"), await open_storage("two")
    await finished(one, "a")
    await finished(two, "b")

    assert [d.instance.instance_id for d in await export_all(one)] == ["a"]
    assert [d.instance.instance_id for d in await export_all(two)] == ["b"]
