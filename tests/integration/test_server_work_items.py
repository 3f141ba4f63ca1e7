"""The work-item stream of `duratask serve`, driven by hand over the raw protocol: what a worker
receives (history, tokens, OrchestratorStarted), what it may send back, and what happens when it
sends nonsense or goes away. The server keeps serving and stored state stays untouched."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from durabletask import task
from durabletask import worker as dt_worker
from durabletask.client import OrchestrationStatus, TaskHubGrpcClient

from duratask import history as h
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.protocol import convert, pb, pb_grpc
from tests.compat.serverlib import RawWorker, ServerThread, quiet_logger


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    running = ServerThread(
        storage=f"sqlite:///{tmp_path / 'serve.db'}",
        health_ping_seconds=0.3,
        refused_hand_back_seconds=0.5,
        park_seconds=1.0,
    )
    yield running
    running.stop()


@pytest.fixture
async def stub(server: ServerThread) -> AsyncIterator[Any]:
    channel = grpc.aio.insecure_channel(server.address)
    yield pb_grpc.TaskHubSidecarServiceStub(channel)
    await channel.close()


async def start(stub: Any, name: str = "orch", instance_id: str = "i-1", input: str | None = None) -> str:
    request = pb.CreateInstanceRequest(name=name, instanceId=instance_id)
    if input is not None:
        request.input.value = input
    response = await stub.StartInstance(request)
    return str(response.instanceId)


async def state_of(stub: Any, instance_id: str) -> Any:
    response = await stub.GetInstance(pb.GetInstanceRequest(instanceId=instance_id, getInputsAndOutputs=True))
    assert response.exists
    return convert.metadata_from_pb(response.orchestrationState)


async def history_of(stub: Any, instance_id: str, execution_id: str | None = None) -> list[h.HistoryEvent]:
    request = pb.StreamInstanceHistoryRequest(instanceId=instance_id)
    if execution_id is not None:
        request.executionId.value = execution_id
    events: list[h.HistoryEvent] = []
    async for chunk in stub.StreamInstanceHistory(request):
        events += [convert.event_from_pb(e) for e in chunk.events]
    return events


def respond(item: Any, *actions: h.OrchestratorAction, instance_id: str | None = None) -> Any:
    request = item.orchestratorRequest
    return pb.OrchestratorResponse(
        instanceId=request.instanceId if instance_id is None else instance_id,
        completionToken=item.completionToken,
        actions=[convert.action_to_pb(a) for a in actions],
    )


def activity_done(item: Any, result: str, task_id: int | None = None) -> Any:
    request = item.activityRequest
    response = pb.ActivityResponse(
        instanceId=request.orchestrationInstance.instanceId,
        taskId=request.taskId if task_id is None else task_id,
        completionToken=item.completionToken,
    )
    response.result.value = result
    return response


def kinds(events: Any) -> list[str]:
    return [e.WhichOneof("eventType") for e in events]


def complete(id: int = 99, result: str = '"done"') -> h.CompleteOrchestration:
    return h.CompleteOrchestration(id=id, status=Status.COMPLETED, result=result)


async def expect_status(call: Any, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == code, refused.value.details()
    details = refused.value.details() or ""
    for word in words:
        assert word in details, details
    return details


# --- what a worker receives ------------------------------------------------------------------


async def test_each_request_has_the_full_history_and_opens_with_orchestrator_started(
    server: ServerThread, stub: Any
) -> None:
    instance_id = await start(stub, input='"in"')
    async with RawWorker(server.address) as worker:
        await worker.connect()
        first = await worker.next()
        request = first.orchestratorRequest
        assert request.instanceId == instance_id and request.executionId.value
        assert list(request.pastEvents) == []
        assert kinds(request.newEvents) == ["orchestratorStarted", "executionStarted"]
        assert request.newEvents[1].executionStarted.input.value == '"in"'
        await stub.CompleteOrchestratorTask(respond(first, h.ScheduleTask(id=0, name="act", input='"x"')))

        activity = await worker.next()
        assert activity.activityRequest.name == "act" and activity.activityRequest.taskId == 0
        assert activity.activityRequest.input.value == '"x"'
        await stub.CompleteActivityTask(activity_done(activity, "42"))

        second = await worker.next()
        request = second.orchestratorRequest
        assert kinds(request.pastEvents) == ["orchestratorStarted", "executionStarted", "taskScheduled"]
        assert kinds(request.newEvents) == ["orchestratorStarted", "taskCompleted"]
        assert request.newEvents[1].taskCompleted.result.value == "42"
        await stub.CompleteOrchestratorTask(respond(second, complete(1)))

        tokens = {first.completionToken, activity.completionToken, second.completionToken}
        assert len(tokens) == 3 and "" not in tokens
    state = await state_of(stub, instance_id)
    assert state.runtime_status is Status.COMPLETED and state.serialized_output == '"done"'


async def test_idle_streams_get_health_pings(server: ServerThread) -> None:
    async with RawWorker(server.address) as worker:
        await worker.connect()
        started = time.monotonic()
        ping = await worker.next(timeout=5, pings=True)
        assert ping.WhichOneof("request") == "healthPing"
        assert time.monotonic() - started < 2


async def test_zero_scheduled_start_means_now(server: ServerThread, stub: Any) -> None:
    request = pb.CreateInstanceRequest(name="orch", instanceId="epoch")
    request.scheduledStartTimestamp.FromDatetime(datetime(1970, 1, 1, tzinfo=UTC))  # what the JS SDK sends
    await stub.StartInstance(request)
    async with RawWorker(server.address) as worker:
        await worker.connect()
        item = await worker.next(timeout=3)
        assert item.orchestratorRequest.instanceId == "epoch"


# --- histories by execution ------------------------------------------------------------------


async def test_history_of_an_unknown_instance_is_not_found(server: ServerThread, stub: Any) -> None:
    await expect_status(history_of(stub, "nobody"), grpc.StatusCode.NOT_FOUND, "'nobody'")
    await expect_status(history_of(stub, "nobody", "e-1"), grpc.StatusCode.NOT_FOUND, "'nobody'")


async def test_history_by_execution_id_is_the_current_execution_only(server: ServerThread, stub: Any) -> None:
    instance_id = await start(stub, input="0")
    async with RawWorker(server.address) as worker:
        await worker.connect()
        item = await worker.next()
        first = item.orchestratorRequest.executionId.value
        # Before the first episode commits: no events yet, but the execution is known.
        assert await history_of(stub, instance_id, first) == [] == await history_of(stub, instance_id)
        await expect_status(
            history_of(stub, instance_id, "not-an-execution"), grpc.StatusCode.NOT_FOUND,
            f"'{instance_id}'", "'not-an-execution'",
        )  # fmt: skip
        await stub.CompleteOrchestratorTask(respond(item, h.ScheduleTask(id=0, name="act")))
        current = await history_of(stub, instance_id)
        assert [type(e).__name__ for e in current] == ["OrchestratorStarted", "ExecutionStarted", "TaskScheduled"]
        assert await history_of(stub, instance_id, "") == current  # an empty id: the current execution
        assert await history_of(stub, instance_id, first) == current

        await stub.CompleteActivityTask(activity_done(await worker.next(), "1"))
        item = await worker.next()
        restart = h.CompleteOrchestration(id=1, status=Status.CONTINUED_AS_NEW, result='"again"')
        await stub.CompleteOrchestratorTask(respond(item, restart))
        item = await worker.next()
        second = item.orchestratorRequest.executionId.value
        assert second and second != first
        # The first execution's history is gone with it; the new one is current, not yet started.
        await expect_status(
            history_of(stub, instance_id, first), grpc.StatusCode.NOT_FOUND, f"'{instance_id}'", f"'{first}'"
        )
        assert await history_of(stub, instance_id, second) == []
        await stub.CompleteOrchestratorTask(respond(item, complete(0)))
        ended = await history_of(stub, instance_id, second)
        assert ended == await history_of(stub, instance_id)
        started = next(e for e in ended if isinstance(e, h.ExecutionStarted))
        assert started.execution_id == second and started.input == '"again"'
        await expect_status(history_of(stub, instance_id, first), grpc.StatusCode.NOT_FOUND, f"'{first}'")


# --- tokens ------------------------------------------------------------------------------------


async def test_unknown_tokens_are_refused(server: ServerThread, stub: Any) -> None:
    bogus_activity = pb.ActivityResponse(instanceId="x", taskId=0, completionToken="bogus")
    await expect_status(stub.CompleteActivityTask(bogus_activity), grpc.StatusCode.NOT_FOUND, "bogus")
    bogus = pb.OrchestratorResponse(instanceId="x", completionToken="bogus")
    await expect_status(stub.CompleteOrchestratorTask(bogus), grpc.StatusCode.NOT_FOUND)
    await expect_status(
        stub.AbandonTaskOrchestratorWorkItem(pb.AbandonOrchestrationTaskRequest(completionToken="bogus")),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_status(
        stub.AbandonTaskActivityWorkItem(pb.AbandonActivityTaskRequest(completionToken="")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_token_settles_once(server: ServerThread, stub: Any) -> None:
    instance_id = await start(stub)
    async with RawWorker(server.address) as worker:
        await worker.connect()
        item = await worker.next()
        await stub.CompleteOrchestratorTask(
            respond(item, h.CreateTimer(id=0, fire_at=datetime(2100, 1, 1, tzinfo=UTC)))
        )
        before = await history_of(stub, instance_id)
        # The same token again (a retried or replayed completion): refused, nothing changes.
        await expect_status(
            stub.CompleteOrchestratorTask(respond(item, complete())), grpc.StatusCode.NOT_FOUND
        )
        await expect_status(
            stub.AbandonTaskOrchestratorWorkItem(
                pb.AbandonOrchestrationTaskRequest(completionToken=item.completionToken)
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        assert await history_of(stub, instance_id) == before
        assert (await state_of(stub, instance_id)).runtime_status is Status.RUNNING


async def test_abandon_requeues_with_a_new_token(server: ServerThread, stub: Any) -> None:
    await start(stub)
    async with RawWorker(server.address) as worker:
        await worker.connect()
        first = await worker.next()
        await stub.AbandonTaskOrchestratorWorkItem(
            pb.AbandonOrchestrationTaskRequest(completionToken=first.completionToken)
        )
        again = await worker.next(timeout=5)
        assert again.orchestratorRequest.instanceId == first.orchestratorRequest.instanceId
        assert again.completionToken != first.completionToken
        assert kinds(again.orchestratorRequest.newEvents) == ["orchestratorStarted", "executionStarted"]
        await expect_status(
            stub.CompleteOrchestratorTask(respond(first, complete())), grpc.StatusCode.NOT_FOUND
        )
        await stub.CompleteOrchestratorTask(respond(again, complete()))


async def test_one_orchestration_item_per_instance_in_flight(server: ServerThread, stub: Any) -> None:
    instance_id = await start(stub)
    async with RawWorker(server.address) as worker:
        await worker.connect()
        first = await worker.next()
        for n in range(3):
            await stub.RaiseEvent(pb.RaiseEventRequest(instanceId=instance_id, name=f"e{n}"))
        await worker.nothing_for(0.5)  # the instance is in flight: its new events wait
        await stub.CompleteOrchestratorTask(respond(first))
        second = await worker.next()
        assert kinds(second.orchestratorRequest.newEvents) == ["orchestratorStarted", *["eventRaised"] * 3]
        await stub.CompleteOrchestratorTask(respond(second, complete()))


# --- refused completions -----------------------------------------------------------------------


async def _instance_with_one_finished_task(
    server: ServerThread, stub: Any, worker: RawWorker
) -> tuple[str, Any]:
    instance_id = await start(stub)
    await worker.connect()
    first = await worker.next()
    await stub.CompleteOrchestratorTask(respond(first, h.ScheduleTask(id=0, name="act")))
    activity = await worker.next()
    await stub.CompleteActivityTask(activity_done(activity, "1"))
    return instance_id, await worker.next()


async def test_responses_that_contradict_history_are_refused(server: ServerThread, stub: Any) -> None:
    async with RawWorker(server.address) as worker:
        instance_id, item = await _instance_with_one_finished_task(server, stub, worker)
        before = await history_of(stub, instance_id)
        refusals = [
            (
                respond(item, h.CreateTimer(id=0, fire_at=datetime(2100, 1, 1, tzinfo=UTC))),
                "contradicts the history",
            ),
            (respond(item, h.ScheduleTask(id=0, name="act")), "the same task again"),
            (respond(item, h.ScheduleTask(id=1, name="a"), h.ScheduleTask(id=1, name="b")), "task id 1"),
            (respond(item, h.ScheduleTask(id=1, name="")), "names no task"),
            (respond(item, h.SendEvent(id=1, instance_id="", name="e")), "no target instance"),
            (respond(item, h.CompleteOrchestration(id=1, status=Status.RUNNING)), "does not end"),
            (respond(item, complete(), instance_id="someone-else"), "belongs to instance"),
        ]
        for response, words in refusals:
            await expect_status(
                stub.CompleteOrchestratorTask(response), grpc.StatusCode.INVALID_ARGUMENT, words
            )
        partial = respond(item, complete(1))
        partial.isPartial = True
        await expect_status(
            stub.CompleteOrchestratorTask(partial), grpc.StatusCode.INVALID_ARGUMENT, "isPartial"
        )
        untyped = respond(item)
        untyped.actions.add(id=1)  # an action with no kind at all
        await expect_status(stub.CompleteOrchestratorTask(untyped), grpc.StatusCode.INVALID_ARGUMENT, "no")
        entity = respond(item)
        entity.actions.add(id=1).sendEntityMessage.SetInParent()
        await expect_status(
            stub.CompleteOrchestratorTask(entity), grpc.StatusCode.INVALID_ARGUMENT, "sendEntityMessage"
        )

        assert await history_of(stub, instance_id) == before
        assert (await state_of(stub, instance_id)).runtime_status is Status.RUNNING
        # The token stays good for a correct completion for a while.
        await stub.CompleteOrchestratorTask(respond(item, complete(1)))
    assert (await state_of(stub, instance_id)).runtime_status is Status.COMPLETED


async def test_a_refused_item_goes_back_to_the_queue(server: ServerThread, stub: Any) -> None:
    async with RawWorker(server.address) as worker:
        instance_id, item = await _instance_with_one_finished_task(server, stub, worker)
        bad = respond(item, h.CreateTimer(id=0, fire_at=datetime(2100, 1, 1, tzinfo=UTC)))
        await expect_status(stub.CompleteOrchestratorTask(bad), grpc.StatusCode.INVALID_ARGUMENT)
        again = await worker.next(timeout=5)  # after refused_hand_back_seconds
        assert again.orchestratorRequest.instanceId == instance_id
        assert again.completionToken != item.completionToken
        assert kinds(again.orchestratorRequest.newEvents) == ["orchestratorStarted", "taskCompleted"]
        await expect_status(
            stub.CompleteOrchestratorTask(respond(item, complete(1))), grpc.StatusCode.NOT_FOUND
        )
        await stub.CompleteOrchestratorTask(respond(again, complete(1)))


async def test_activity_results_for_another_task_are_refused(server: ServerThread, stub: Any) -> None:
    instance_id = await start(stub)
    async with RawWorker(server.address) as worker:
        await worker.connect()
        first = await worker.next()
        await stub.CompleteOrchestratorTask(respond(first, h.ScheduleTask(id=0, name="act")))
        activity = await worker.next()
        await expect_status(
            stub.CompleteActivityTask(activity_done(activity, "1", task_id=7)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not to task 7",
        )
        wrong_instance = activity_done(activity, "1")
        wrong_instance.instanceId = "someone-else"
        await expect_status(stub.CompleteActivityTask(wrong_instance), grpc.StatusCode.INVALID_ARGUMENT)
        assert [type(e).__name__ for e in await history_of(stub, instance_id)][-1] == "TaskScheduled"
        await stub.CompleteActivityTask(activity_done(activity, "1"))
        second = await worker.next()
        assert kinds(second.orchestratorRequest.newEvents)[-1] == "taskCompleted"


# --- workers that go away ----------------------------------------------------------------------


async def test_a_dropped_stream_hands_its_items_to_another_worker(server: ServerThread, stub: Any) -> None:
    await start(stub)
    first_worker = await RawWorker(server.address).connect()
    item = await first_worker.next()
    await first_worker.close()  # gone mid-item
    async with RawWorker(server.address) as second_worker:
        await second_worker.connect()
        started = time.monotonic()
        again = await second_worker.next(timeout=10)
        assert time.monotonic() - started < 5  # handed back at once, not after the 30 s lease
        assert again.orchestratorRequest.instanceId == item.orchestratorRequest.instanceId
        assert again.completionToken != item.completionToken
        await expect_status(
            stub.CompleteOrchestratorTask(respond(item, complete())), grpc.StatusCode.NOT_FOUND
        )
        await stub.CompleteOrchestratorTask(respond(again, complete()))


RUNS: list[int] = []
RUNS_LOCK = threading.Lock()


def count_me(ctx: task.ActivityContext, n: int) -> int:
    with RUNS_LOCK:
        RUNS.append(n)
    return n * 10


def count_once(ctx: task.OrchestrationContext, n: int) -> Any:
    value = yield ctx.call_activity(count_me, input=n)
    return value


def _official_worker(address: str, orchestrations: list[Any], activities: list[Any]) -> Any:
    worker = dt_worker.TaskHubGrpcWorker(host_address=address, logger=quiet_logger("worker"))
    for fn in orchestrations:
        worker.add_orchestrator(fn)
    for fn in activities:
        worker.add_activity(fn)
    worker.use_work_item_filters()  # filters from what it registered: only that comes to it
    worker.start()
    return worker


async def test_worker_gone_mid_activity_the_item_completes_once_elsewhere(server: ServerThread) -> None:
    RUNS.clear()
    orchestration_worker = _official_worker(server.address, [count_once], [])
    client = TaskHubGrpcClient(host_address=server.address, logger=quiet_logger("client"))
    try:
        # A hand-driven worker that takes only `count_me` activities, and then dies with one.
        doomed = await RawWorker(server.address).connect(
            workItemFilters=pb.WorkItemFilters(activities=[pb.ActivityFilter(name="count_me")])
        )
        instance_id = client.schedule_new_orchestration(count_once, input=7)
        item = await doomed.next(timeout=10)
        assert item.activityRequest.name == "count_me"
        await doomed.close()

        activity_worker = _official_worker(server.address, [], [count_me])
        try:
            state = await asyncio.to_thread(client.wait_for_orchestration_completion, instance_id, timeout=30)
        finally:
            activity_worker.stop()
        assert state.runtime_status == OrchestrationStatus.COMPLETED
        assert state.get_output() == 70
        assert RUNS == [7]  # run once, by the worker that took it over
        late = activity_done(item, "999")
        channel = grpc.aio.insecure_channel(server.address)
        try:
            late_stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            await expect_status(late_stub.CompleteActivityTask(late), grpc.StatusCode.NOT_FOUND)
        finally:
            await channel.close()
        assert client.get_orchestration_state(instance_id).get_output() == 70
    finally:
        orchestration_worker.stop()
        client.close()


# --- limits and filters ------------------------------------------------------------------------


async def test_the_stream_concurrency_limit_holds(server: ServerThread, stub: Any) -> None:
    await start(stub)
    async with RawWorker(server.address) as worker:
        await worker.connect(maxConcurrentActivityWorkItems=2)
        first = await worker.next()
        fan = [h.ScheduleTask(id=i, name="act", input=str(i)) for i in range(5)]
        await stub.CompleteOrchestratorTask(respond(first, *fan))
        held = [await worker.next(), await worker.next()]
        assert all(i.WhichOneof("request") == "activityRequest" for i in held)
        await worker.nothing_for(0.5)  # two in flight: the limit
        await stub.CompleteActivityTask(activity_done(held[0], "0"))
        third = await worker.next()
        assert third.WhichOneof("request") == "activityRequest"


async def test_filters_route_items_by_name(server: ServerThread, stub: Any) -> None:
    async with RawWorker(server.address) as only_a, RawWorker(server.address) as only_b:
        await only_a.connect(
            workItemFilters=pb.WorkItemFilters(orchestrations=[pb.OrchestrationFilter(name="a")])
        )
        await only_b.connect(
            workItemFilters=pb.WorkItemFilters(orchestrations=[pb.OrchestrationFilter(name="b")])
        )
        await start(stub, name="b", instance_id="for-b")
        await start(stub, name="a", instance_id="for-a")
        assert (await only_a.next()).orchestratorRequest.instanceId == "for-a"
        assert (await only_b.next()).orchestratorRequest.instanceId == "for-b"

        # Nobody takes "c" yet: it waits, then goes to the first worker that does.
        await start(stub, name="c", instance_id="for-c")
        await only_a.nothing_for(0.3)
        async with RawWorker(server.address) as only_c:
            await only_c.connect(
                workItemFilters=pb.WorkItemFilters(orchestrations=[pb.OrchestrationFilter(name="c")])
            )
            assert (await only_c.next(timeout=5)).orchestratorRequest.instanceId == "for-c"


async def test_filters_match_versions(server: ServerThread, stub: Any) -> None:
    v2 = pb.CreateInstanceRequest(name="v", instanceId="v2")
    v2.version.value = "2.0"
    await stub.StartInstance(v2)
    async with RawWorker(server.address) as old, RawWorker(server.address) as new:
        await old.connect(
            workItemFilters=pb.WorkItemFilters(
                orchestrations=[pb.OrchestrationFilter(name="v", versions=["1.0"])]
            )
        )
        await old.nothing_for(0.3)
        await new.connect(
            workItemFilters=pb.WorkItemFilters(
                orchestrations=[pb.OrchestrationFilter(name="v", versions=["2.0"])]
            )
        )
        assert (await new.next(timeout=5)).orchestratorRequest.instanceId == "v2"
