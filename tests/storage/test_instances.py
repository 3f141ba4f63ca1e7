"""Contract: instances, queries, inbox, purge."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest

from duratask.errors import OrchestrationAlreadyExistsError
from duratask.history import ExecutionStarted, TaskScheduled
from duratask.models import TERMINAL_STATUSES, TaskFailureDetails
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.storage.base import InstanceFilter, InstanceRecord, PageCursor, Storage

from .builders import (
    activity,
    commit_of,
    create,
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
from .conftest import OpenStorage

NON_TERMINAL = [s for s in Status if s not in TERMINAL_STATUSES]
T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


async def test_every_field_of_an_instance_round_trips(storage: Storage) -> None:
    failure = TaskFailureDetails(
        error_type="ValueError",
        error_message="bad",
        stack_trace="trace",
        inner_failure=TaskFailureDetails(error_type="KeyError", error_message="inner"),
        is_non_retriable=True,
    )
    full = InstanceRecord(
        instance_id="full",
        name="orch",
        execution_id="e",
        status=Status.FAILED,
        created_at=T0,
        last_updated_at=T0 + seconds(1),
        input='{"a": 1}',
        output='"out"',
        custom_status='"custom"',
        failure=failure,
        version="1.2",
        parent_instance_id="parent",
        parent_task_id=7,
        scheduled_start=T0 + seconds(2),
        completed_at=T0 + seconds(3),
    )
    unset = {f: getattr(full, f) for f in full.__struct_fields__ if getattr(full, f) is None}
    assert not unset, f"the test must set every field, add {sorted(unset)}"
    new = new_instance("full")
    await storage.create_instance(msgspec.structs.replace(new, record=full))

    got = await storage.get_instance("full")

    assert got == full
    assert got is not None and got.created_at.tzinfo is not None and got.created_at.utcoffset() == seconds(0)


async def test_missing_instance_is_none(storage: Storage) -> None:
    assert await storage.get_instance("nope") is None
    assert await storage.get_history("nope") == []
    assert await storage.child_instance_ids("nope") == []


async def test_create_puts_execution_started_in_the_inbox(storage: Storage) -> None:
    new = await create(storage, "a")

    lease = await lease_only(storage)

    assert lease.instance == new.record
    assert lease.new_events == [new.started]
    assert lease.history_length == 0


@pytest.mark.parametrize("status", NON_TERMINAL, ids=lambda s: s.name)
async def test_create_refuses_an_unfinished_instance(storage: Storage, status: Status) -> None:
    await create(storage, "a", status=status)

    with pytest.raises(OrchestrationAlreadyExistsError) as caught:
        await create(storage, "a", execution_id="exec-2")

    assert caught.value.instance_id == "a"
    got = await storage.get_instance("a")
    assert got is not None and got.execution_id == "exec-1"


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES, key=lambda s: s.value), ids=lambda s: s.name)
async def test_create_replaces_a_terminal_instance_and_its_data(storage: Storage, status: Status) -> None:
    lease = await running(storage, "a")
    await storage.enqueue([message("a", raised("late"))])
    again = await lease_only(storage)
    scheduled = TaskScheduled(timestamp=utcnow(), event_id=0, name="act")
    assert await storage.commit_orchestrations(
        [commit_of(again, status=status, history=[scheduled], activities=[activity("a", 0)])]
    ) == [True]
    await storage.enqueue([message("a", raised("after-the-end"))])
    assert len(await storage.get_history("a")) == 2

    replacement = await create(storage, "a", execution_id="exec-2")

    assert await storage.get_instance("a") == replacement.record
    assert await storage.get_history("a") == []
    assert await storage.lease_activities(10, 60) == []  # the old execution's activity is gone
    fresh = await lease_only(storage)
    assert fresh.new_events == [replacement.started]  # the old inbox is gone
    assert fresh.history_length == 0
    assert lease.token != fresh.token


async def test_a_failed_create_changes_nothing_else_in_the_same_moment(storage: Storage) -> None:
    await create(storage, "a")
    results = await asyncio.gather(
        create(storage, "a"), create(storage, "b"), create(storage, "c"), return_exceptions=True
    )
    assert isinstance(results[0], OrchestrationAlreadyExistsError)
    assert {lease for lease in await lease_all(storage)} == {"a", "b", "c"}


async def test_a_scheduled_start_waits_in_the_inbox(storage: Storage) -> None:
    later = utcnow() + seconds(60)
    await create(storage, "later", visible_at=later)

    assert await storage.lease_orchestrations(10, 60) == []
    assert await storage.next_visible_at() == later


async def test_a_scheduled_start_is_delivered_when_due(storage: Storage) -> None:
    await create(storage, "soon", visible_at=utcnow() + seconds(0.1))
    await asyncio.sleep(0.15)

    assert (await lease_only(storage)).instance.instance_id == "soon"


async def test_child_instance_ids(storage: Storage) -> None:
    await create(storage, "parent")
    await create(storage, "c1", parent="parent", created_at=T0)
    await create(storage, "c2", parent="parent", created_at=T0 - seconds(1))
    await create(storage, "other", parent="someone-else")

    assert await storage.child_instance_ids("parent") == ["c2", "c1"]
    assert await storage.child_instance_ids("c1") == []


# --- enqueue ---------------------------------------------------------------------------------


async def test_enqueue_delivers_in_order_and_drops_messages_for_unknown_instances(storage: Storage) -> None:
    await create(storage, "a")
    first, second, third = raised("1"), raised("2"), raised("3")

    await storage.enqueue([message("a", first), message("ghost", second), message("a", third)])
    await storage.enqueue([message("a", second)])

    lease = await lease_only(storage)
    assert lease.new_events[1:] == [first, third, second]
    assert await storage.get_instance("ghost") is None


async def test_next_visible_at_is_the_earliest_future_message(storage: Storage) -> None:
    assert await storage.next_visible_at() is None
    await create(storage, "a")
    assert await storage.next_visible_at() is None  # visible now: not a future wake-up

    soon, later = utcnow() + seconds(30), utcnow() + seconds(60)
    await storage.enqueue([message("a", raised("later"), later), message("a", raised("soon"), soon)])

    assert await storage.next_visible_at() == soon


# --- queries ---------------------------------------------------------------------------------


async def _ids(storage: Storage, filter: InstanceFilter, limit: int = 100) -> list[str]:
    return [r.instance_id for r in await storage.query_instances(filter, limit, None)]


async def test_query_orders_by_creation_then_id(storage: Storage) -> None:
    for instance_id, offset in [("b", 0), ("a", 0), ("c", -1), ("d", 1)]:
        await create(storage, instance_id, created_at=T0 + seconds(offset))

    assert await _ids(storage, InstanceFilter()) == ["c", "a", "b", "d"]
    assert await _ids(storage, InstanceFilter(), limit=2) == ["c", "a"]


async def test_paging_with_a_cursor_across_equal_creation_times(storage: Storage) -> None:
    ids = [f"i{n:02}" for n in range(25)]
    for n, instance_id in enumerate(ids):
        await create(storage, instance_id, created_at=T0 + seconds(n // 10))  # runs of ten equal times

    seen: list[str] = []
    after: PageCursor | None = None
    while True:
        page = await storage.query_instances(InstanceFilter(), 4, after)
        if not page:
            break
        seen += [r.instance_id for r in page]
        after = PageCursor(page[-1].created_at, page[-1].instance_id)

    assert seen == ids


async def test_query_filters_by_status(storage: Storage) -> None:
    await running(storage, "r")
    await finished(storage, "d")
    await create(storage, "p")

    assert await _ids(storage, InstanceFilter(statuses=[Status.RUNNING])) == ["r"]
    assert sorted(await _ids(storage, InstanceFilter(statuses=[Status.PENDING, Status.COMPLETED]))) == [
        "d",
        "p",
    ]
    assert sorted(await _ids(storage, InstanceFilter(statuses=[]))) == ["d", "p", "r"]  # empty: no filter


async def test_query_filters_by_creation_time_inclusively(storage: Storage) -> None:
    for n in range(5):
        await create(storage, f"t{n}", created_at=T0 + seconds(n))

    window = InstanceFilter(created_from=T0 + seconds(1), created_to=T0 + seconds(3))
    assert await _ids(storage, window) == ["t1", "t2", "t3"]
    assert await _ids(storage, InstanceFilter(created_from=T0 + seconds(3.5))) == ["t4"]
    assert await _ids(storage, InstanceFilter(created_to=T0)) == ["t0"]


async def test_prefix_matches_literally(storage: Storage) -> None:
    ids = ["a%b", "a_b", "axb", "a%", "ab", "A%b", "a\\b", "a", "b", "a%\U0010ffff", "é%x", "é"]
    for instance_id in ids:
        await create(storage, instance_id)

    async def prefixed(prefix: str) -> list[str]:
        return sorted(await _ids(storage, InstanceFilter(instance_id_prefix=prefix)))

    assert await prefixed("a%") == sorted(["a%b", "a%", "a%\U0010ffff"])
    assert await prefixed("a_") == ["a_b"]
    assert await prefixed("a\\") == ["a\\b"]
    assert await prefixed("A") == ["A%b"]  # case-sensitive
    assert await prefixed("é") == sorted(["é%x", "é"])
    assert await prefixed("a%\U0010ffff") == ["a%\U0010ffff"]
    assert await prefixed("zz") == []
    assert await prefixed("") == sorted(ids)


async def test_filters_combine(storage: Storage) -> None:
    await running(storage, "job-1", created_at=T0)
    await running(storage, "job-2", created_at=T0 + seconds(10))
    await create(storage, "job-3", created_at=T0)
    await running(storage, "other", created_at=T0)

    found = await _ids(
        storage,
        InstanceFilter(statuses=[Status.RUNNING], created_to=T0 + seconds(1), instance_id_prefix="job-"),
    )
    assert found == ["job-1"]


# --- purge -----------------------------------------------------------------------------------


async def test_delete_removes_only_terminal_instances_with_their_data(storage: Storage) -> None:
    await finished(storage, "done")
    await finished(storage, "failed", Status.FAILED)
    await running(storage, "live")
    await storage.enqueue([message("done", raised("late")), message("live", raised("x"))])

    count = await storage.delete_instances(["done", "failed", "live", "ghost", "done"])

    assert count == 2
    assert await storage.get_instance("done") is None
    assert await storage.get_history("done") == []
    assert await storage.get_instance("live") is not None
    assert [lease.task.instance_id for lease in await storage.lease_activities(10, 60)] == []
    assert set(await lease_all(storage)) == {"live"}  # the purged inbox is gone
    assert await storage.delete_instances([]) == 0


async def test_delete_matching_filters_and_spares_unfinished(storage: Storage) -> None:
    await finished(storage, "old-done", created_at=T0)
    await finished(storage, "old-failed", Status.FAILED, created_at=T0)
    await finished(storage, "new-done", created_at=T0 + seconds(100))
    await running(storage, "old-running", created_at=T0)

    assert (
        await storage.delete_instances_matching(InstanceFilter(created_to=T0, statuses=[Status.FAILED])) == 1
    )
    assert await storage.delete_instances_matching(InstanceFilter(created_to=T0 + seconds(1))) == 1
    assert sorted(await _ids(storage, InstanceFilter())) == ["new-done", "old-running"]
    assert await storage.delete_instances_matching(InstanceFilter(statuses=[Status.RUNNING])) == 0
    assert await storage.delete_instances_matching(InstanceFilter()) == 1
    assert await _ids(storage, InstanceFilter()) == ["old-running"]


# --- task hubs -------------------------------------------------------------------------------


async def test_task_hubs_share_a_database_without_seeing_each_other(open_storage: OpenStorage) -> None:
    orders, billing = await open_storage("orders"), await open_storage("billing")
    await create(orders, "same-id")
    await running(billing, "same-id", execution_id="billing-exec")
    await billing.enqueue([message("same-id", raised("for-billing"))])

    assert (await orders.get_instance("same-id")).execution_id == "exec-1"  # type: ignore[union-attr]
    assert [r.instance_id for r in await orders.query_instances(InstanceFilter(), 10, None)] == ["same-id"]
    lease = await lease_only(orders)
    assert isinstance(lease.new_events[0], ExecutionStarted) and len(lease.new_events) == 1
    assert await billing.delete_instances(["same-id"]) == 0
    assert len(await billing.get_history("same-id")) == 1
    assert await orders.get_history("same-id") == []
