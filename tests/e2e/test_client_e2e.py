"""Every client method, both orchestrator styles, end to end through a real worker and storage."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from duratask import (
    DurableTaskClient,
    InstanceStateError,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    OrchestrationQuery,
    PurgeInstancesFilter,
    StartOrchestrationOptions,
)
from duratask import (
    OrchestrationRuntimeStatus as S,
)

from . import orchestrations as o

T = 20  # seconds: generous bound for any single wait on a loaded machine


async def run(client: DurableTaskClient, orchestrator: object, input: object = None, **kw: object):
    iid = await client.schedule_new_orchestration_instance(orchestrator, input, **kw)  # type: ignore[arg-type]
    return await client.wait_for_instance_completion(iid, True, timeout=T)


@pytest.mark.parametrize("orchestrator", [o.hello_cities, o.hello_cities_gen], ids=["async", "generator"])
async def test_chain_both_styles(client: DurableTaskClient, orchestrator: object) -> None:
    meta = await run(client, orchestrator)
    assert meta is not None and meta.runtime_status is S.COMPLETED
    assert meta.read_output_as(list) == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]


async def test_schedule_by_name_with_id_and_options(client: DurableTaskClient) -> None:
    iid = await client.schedule_new_orchestration_instance("hello_cities", instance_id="named-1")
    assert iid == "named-1"
    iid2 = await client.schedule_new_orchestration_instance(
        "hello_cities", options=StartOrchestrationOptions(instance_id="named-2")
    )
    assert iid2 == "named-2"
    for i in (iid, iid2):
        meta = await client.wait_for_instance_completion(i, timeout=T)
        assert meta is not None and meta.runtime_status is S.COMPLETED
        assert meta.serialized_output is None  # not asked for
        assert meta.name == "hello_cities"


async def test_duplicate_running_id_rejected_terminal_replaced(client: DurableTaskClient) -> None:
    await client.schedule_new_orchestration_instance(o.wait_for_approval, instance_id="dup")
    with pytest.raises(OrchestrationAlreadyExistsError):
        await client.schedule_new_orchestration_instance(o.wait_for_approval, instance_id="dup")
    await client.raise_event("dup", "approval", 1)
    first = await client.wait_for_instance_completion("dup", True, timeout=T)
    assert first is not None and first.serialized_output == "1"
    await client.schedule_new_orchestration_instance(o.hello_cities, instance_id="dup")
    second = await client.wait_for_instance_completion("dup", True, timeout=T)
    assert second is not None and second.name == "hello_cities" and second.runtime_status is S.COMPLETED
    history = await client.get_orchestration_history("dup")
    assert not any(type(e).__name__ == "EventRaised" for e in history), "old history must be gone"


async def test_fan_out_fan_in(client: DurableTaskClient) -> None:
    meta = await run(client, o.fan_out, 50)
    assert meta is not None and meta.read_output_as(int) == sum(i * 2 for i in range(50))


async def test_external_event_and_custom_status(client: DurableTaskClient) -> None:
    iid = await client.schedule_new_orchestration_instance(o.wait_for_approval)
    started = await client.wait_for_instance_start(iid, True, timeout=T)
    assert started is not None and started.runtime_status in (S.RUNNING, S.COMPLETED)
    for _ in range(200):
        meta = await client.get_instance(iid, get_inputs_and_outputs=True)
        if meta and meta.serialized_custom_status:
            break
        await asyncio.sleep(0.02)
    assert meta is not None and meta.read_custom_status_as(str) == "waiting"
    await client.raise_event(iid, "approval", {"by": "ann"})
    done = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert done is not None and done.read_output_as(dict) == {"by": "ann"}
    assert done.read_custom_status_as(str) == "approved"


async def test_event_raised_before_waiting_is_buffered(client: DurableTaskClient) -> None:
    iid = await client.schedule_new_orchestration_instance(o.wait_for_approval)
    await client.raise_event(iid, "approval", "early")  # may arrive before the orchestrator waits
    done = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert done is not None and done.read_output_as(str) == "early"


async def test_raise_event_to_finished_instance_is_an_error(client: DurableTaskClient) -> None:
    meta = await run(client, o.hello_cities)
    assert meta is not None
    with pytest.raises(InstanceStateError):
        await client.raise_event(meta.instance_id, "approval", 1)
    after = await client.get_instance(meta.instance_id, True)
    assert after is not None and after.runtime_status is S.COMPLETED
    assert after.serialized_output == meta.serialized_output


async def test_timer_and_when_any(client: DurableTaskClient) -> None:
    timed_out = await run(client, o.event_or_timeout, 0.2)
    assert timed_out is not None and timed_out.read_output_as(str) == "timeout"
    iid = await client.schedule_new_orchestration_instance(o.event_or_timeout, 30)
    await client.wait_for_instance_start(iid, timeout=T)
    await client.raise_event(iid, "go")
    won = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert won is not None and won.read_output_as(str) == "event"


async def test_scheduled_start_keeps_pending(client: DurableTaskClient) -> None:
    start_at = datetime.now(UTC) + timedelta(seconds=1.0)
    iid = await client.schedule_new_orchestration_instance(o.hello_cities, start_at=start_at)
    meta = await client.get_instance(iid)
    assert meta is not None and meta.runtime_status is S.PENDING
    with pytest.raises(TimeoutError):
        await client.wait_for_instance_start(iid, timeout=0.3)
    done = await client.wait_for_instance_completion(iid, timeout=T)
    assert done is not None and done.runtime_status is S.COMPLETED
    assert datetime.now(UTC) >= start_at


async def test_terminate_pending_scheduled_instance(client: DurableTaskClient) -> None:
    iid = await client.schedule_new_orchestration_instance(
        o.hello_cities, start_at=datetime.now(UTC) + timedelta(hours=1)
    )
    await client.terminate_instance(iid, "never mind")
    meta = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert meta is not None and meta.runtime_status is S.TERMINATED
    assert meta.read_output_as(str) == "never mind"


async def test_sub_orchestrations(client: DurableTaskClient) -> None:
    meta = await run(client, o.parent, 3)
    assert meta is not None and meta.runtime_status is S.COMPLETED
    assert meta.read_output_as(list) == [sum(i * 2 for i in range(n)) for n in (1, 2, 3)]


async def test_activity_failure_caught_and_unhandled(client: DurableTaskClient) -> None:
    caught = await run(client, o.catches_failure)
    assert caught is not None and caught.read_output_as(str) == "caught ValueError: boom"
    failed = await run(client, o.fails)
    assert failed is not None and failed.runtime_status is S.FAILED
    assert failed.failure_details is not None
    assert "unhandled boom" in failed.failure_details.error_message
    assert failed.failure_details.error_type.endswith("TaskFailedError")


async def test_retry_policy(client: DurableTaskClient) -> None:
    meta = await run(client, o.retries, f"k-{uuid4()}")
    assert meta is not None and meta.runtime_status is S.COMPLETED and meta.read_output_as(int) == 3


async def test_continue_as_new_resets_history(client: DurableTaskClient) -> None:
    meta = await run(client, o.counter, 0)
    assert meta is not None and meta.runtime_status is S.COMPLETED and meta.read_output_as(int) == 5
    history = await client.get_orchestration_history(meta.instance_id)
    starts = [e for e in history if type(e).__name__ == "ExecutionStarted"]
    assert len(starts) == 1 and starts[0].input == "5"  # type: ignore[union-attr]


async def test_rich_types_round_trip(client: DurableTaskClient) -> None:
    order = o.Order(order_id=uuid4(), placed_at=datetime.now(UTC), size=o.Size.LARGE, quantity=4)
    meta = await run(client, o.process_order, order)
    assert meta is not None and meta.runtime_status is S.COMPLETED, meta and meta.failure_details
    assert meta.read_input_as(o.Order) == order
    assert meta.read_output_as(o.Receipt) == o.Receipt(order_id=order.order_id, total=12, size=o.Size.LARGE)


async def test_unknown_orchestrator_fails_only_that_instance(client: DurableTaskClient) -> None:
    bad = await run(client, "no_such_orchestrator")
    assert bad is not None and bad.runtime_status is S.FAILED
    assert bad.failure_details is not None and "no_such_orchestrator" in bad.failure_details.error_message
    good = await run(client, o.hello_cities)
    assert good is not None and good.runtime_status is S.COMPLETED


async def test_unknown_activity_fails_the_instance_clearly(client: DurableTaskClient) -> None:
    meta = await run(client, o.calls_unknown_activity)
    assert meta is not None and meta.runtime_status is S.FAILED
    assert meta.failure_details is not None and "no_such_activity" in meta.failure_details.error_message


async def test_new_uuid_is_deterministic_across_replays(client: DurableTaskClient) -> None:
    meta = await run(client, o.uuids)
    assert meta is not None and meta.runtime_status is S.COMPLETED
    first, second = meta.read_output_as(list)  # type: ignore[misc]
    assert first != second


async def test_send_event_between_instances(client: DurableTaskClient) -> None:
    target = await client.schedule_new_orchestration_instance(o.wait_for_approval)
    await client.wait_for_instance_start(target, timeout=T)
    await run(client, o.sends_event, target)
    done = await client.wait_for_instance_completion(target, True, timeout=T)
    assert done is not None and done.read_output_as(str) == "from-sibling"


async def test_terminate_recursive_and_terminal_noop(client: DurableTaskClient) -> None:
    iid = await client.schedule_new_orchestration_instance(o.parent_of_waiter, instance_id=f"p-{uuid4().hex[:6]}")
    child = f"{iid}-child"
    for _ in range(500):
        if await client.get_instance(child):
            break
        await asyncio.sleep(0.02)
    await client.wait_for_instance_start(child, timeout=T)
    await client.terminate_instance(iid, "stop")
    meta = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert meta is not None and meta.runtime_status is S.TERMINATED and meta.read_output_as(str) == "stop"
    child_meta = await client.wait_for_instance_completion(child, timeout=T)
    assert child_meta is not None and child_meta.runtime_status is S.TERMINATED
    await client.terminate_instance(iid, "again")  # no-op on a terminal instance
    again = await client.get_instance(iid, True)
    assert again is not None and again.read_output_as(str) == "stop"
    history = await client.get_orchestration_history(iid)
    assert any(type(e).__name__ == "ExecutionTerminated" and e.input == '"stop"' for e in history)  # type: ignore[union-attr]


async def test_suspend_holds_events_until_resume(client: DurableTaskClient) -> None:
    iid = await client.schedule_new_orchestration_instance(o.wait_for_approval)
    await client.wait_for_instance_start(iid, timeout=T)
    await client.suspend_instance(iid, "maintenance")
    for _ in range(500):
        meta = await client.get_instance(iid)
        if meta and meta.runtime_status is S.SUSPENDED:
            break
        await asyncio.sleep(0.02)
    assert meta is not None and meta.runtime_status is S.SUSPENDED
    await client.raise_event(iid, "approval", "while-suspended")
    await asyncio.sleep(0.3)
    still = await client.get_instance(iid)
    assert still is not None and still.runtime_status is S.SUSPENDED
    await client.resume_instance(iid, "done")
    done = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert done is not None and done.read_output_as(str) == "while-suspended"
    kinds = [type(e).__name__ for e in await client.get_orchestration_history(iid)]
    assert "ExecutionSuspended" in kinds and "ExecutionResumed" in kinds


async def test_query_filters_and_paging(client: DurableTaskClient) -> None:
    ids = [f"q%_{i:02d}" for i in range(7)]
    for i in ids:
        await client.schedule_new_orchestration_instance(o.hello_cities, instance_id=i)
    await client.schedule_new_orchestration_instance(o.hello_cities, instance_id="qX_decoy")
    await client.schedule_new_orchestration_instance(o.hello_cities, instance_id="q%Xdecoy")
    for i in [*ids, "qX_decoy", "q%Xdecoy"]:
        await client.wait_for_instance_completion(i, timeout=T)
    seen: list[str] = []
    token = None
    while True:
        page = await client.get_all_instances(
            OrchestrationQuery(instance_id_prefix="q%_", page_size=3, continuation_token=token)
        )
        assert len(page.instances) <= 3
        seen += [m.instance_id for m in page.instances]
        token = page.continuation_token
        if token is None:
            break
    assert seen == ids  # created in this order; % and _ matched literally
    none = await client.get_all_instances(OrchestrationQuery(runtime_status=[S.FAILED], instance_id_prefix="q"))
    assert none.instances == [] and none.continuation_token is None
    future = await client.get_all_instances(
        OrchestrationQuery(created_from=datetime.now(UTC) + timedelta(minutes=1))
    )
    assert future.instances == []


async def test_purge_instance_and_by_filter(client: DurableTaskClient) -> None:
    running = await client.schedule_new_orchestration_instance(o.wait_for_approval)
    with pytest.raises(InstanceStateError):
        await client.purge_instance(running)
    parent = await run(client, o.parent, 2)
    assert parent is not None
    children = [m for m in (await client.get_all_instances()).instances if m.instance_id.startswith(parent.instance_id + ":")]
    assert len(children) == 2
    result = await client.purge_instance(parent.instance_id)
    assert result.purged_instance_count == 3
    assert await client.get_instance(parent.instance_id) is None
    with pytest.raises(OrchestrationNotFoundError):
        await client.purge_instance(parent.instance_id)
    done = [await run(client, o.hello_cities) for _ in range(3)]
    purged = await client.purge_all_instances(PurgeInstancesFilter(runtime_status=[S.COMPLETED]))
    assert purged.purged_instance_count == 3
    assert all([await client.get_instance(m.instance_id) is None for m in done if m])
    assert await client.get_instance(running) is not None  # running instances are never purged


async def test_unknown_instance_operations(client: DurableTaskClient) -> None:
    assert await client.get_instance("nope") is None
    assert await client.wait_for_instance_completion("nope", timeout=1) is None
    for op in (
        client.raise_event("nope", "e"),
        client.terminate_instance("nope"),
        client.suspend_instance("nope"),
        client.resume_instance("nope"),
        client.purge_instance("nope"),
    ):
        with pytest.raises(OrchestrationNotFoundError):
            await op


async def test_continue_as_new_carries_unprocessed_events_in_order(client: DurableTaskClient) -> None:
    iid = await client.schedule_new_orchestration_instance(o.accumulate, 0)
    for value in (1, 2, 3, "stop"):  # quickly: several arrive while an execution is finishing
        await client.raise_event(iid, "add", value)
    meta = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert meta is not None and meta.runtime_status is S.COMPLETED
    assert meta.read_output_as(int) == 6


async def test_sub_orchestration_id_held_by_a_running_instance_fails_in_the_parent(
    client: DurableTaskClient,
) -> None:
    taken = await client.schedule_new_orchestration_instance(o.wait_for_approval)
    await client.wait_for_instance_start(taken, timeout=T)
    meta = await run(client, o.clashing_child, taken)
    assert meta is not None and meta.runtime_status is S.COMPLETED
    assert "refused" in meta.read_output_as(str) and taken in meta.read_output_as(str)  # type: ignore[operator]
    still = await client.get_instance(taken)
    assert still is not None and still.runtime_status is S.RUNNING
