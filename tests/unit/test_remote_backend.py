"""RemoteBackend against a throwaway sidecar of our own: a real grpc.aio server on loopback whose
RPCs answer what each test tells them to, and record what they received (request and metadata).

What is checked: the requests each Backend call sends, the metadata on every call, the one
status-code table, deadlines, the work-item stream (routing, history streaming, hand-backs,
reconnection) and completions (refusals, oversized results).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from duratask import history as h
from duratask.backend.api import OrchestrationResult
from duratask.backend.remote import (
    RemoteBackend,
    RemoteCallError,
    SchedulerUnavailableError,
    TaskHubNotFoundError,
    work_stream,
)
from duratask.backend.remote import backend as remote_backend
from duratask.connection import RemoteTarget, parse
from duratask.errors import (
    DurableTaskError,
    InstanceStateError,
    InvalidInstanceIdError,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    PayloadTooLargeError,
    UnauthenticatedError,
)
from duratask.models import (
    OrchestrationQuery,
    PurgeInstancesFilter,
    TaskFailureDetails,
)
from duratask.models import (
    OrchestrationRuntimeStatus as S,
)
from duratask.protocol import convert, pb, pb_grpc

T0 = datetime(2024, 5, 17, 8, 30, tzinfo=UTC)
Code = grpc.StatusCode
Handler = Callable[[Any, Any], Awaitable[Any]]

SERVICE = pb.DESCRIPTOR.services_by_name["TaskHubSidecarService"]


class Sidecar(pb_grpc.TaskHubSidecarServiceServicer):  # type: ignore[misc]
    """Answers every unary RPC with an empty response unless ``handlers`` says otherwise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, str]]] = []
        self.handlers: dict[str, Handler] = {}
        self.work_streams: list[Callable[[Any, Any], AsyncIterator[Any]]] = []
        self.history: list[Any] = []
        self.port = 0

    def requests(self, name: str) -> list[Any]:
        return [request for method, request, _ in self.calls if method == name]

    def fail(self, name: str, code: grpc.StatusCode, message: str) -> None:
        async def abort(request: Any, context: Any) -> Any:
            await context.abort(code, message)

        self.handlers[name] = abort

    def _record(self, name: str, request: Any, context: Any) -> None:
        self.calls.append((name, request, dict(context.invocation_metadata())))

    async def GetWorkItems(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self._record("GetWorkItems", request, context)
        if not self.work_streams:
            await asyncio.Event().wait()  # an idle stream
        async for item in self.work_streams.pop(0)(request, context):
            yield item

    async def StreamInstanceHistory(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self._record("StreamInstanceHistory", request, context)
        if "StreamInstanceHistory" in self.handlers:
            await self.handlers["StreamInstanceHistory"](request, context)
        for start in range(0, len(self.history), 2):  # two events a chunk: several chunks
            yield pb.HistoryChunk(events=self.history[start : start + 2])


def _unary(name: str, response_class: Any) -> Any:
    async def handle(self: Sidecar, request: Any, context: Any) -> Any:
        self._record(name, request, context)
        handler = self.handlers.get(name)
        response = await handler(request, context) if handler is not None else None
        return response_class() if response is None else response

    return handle


for _method in SERVICE.methods:
    if not _method.server_streaming:
        setattr(
            Sidecar, _method.name, _unary(_method.name, message_factory.GetMessageClass(_method.output_type))
        )


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    server = grpc.aio.server()
    servicer = Sidecar()
    pb_grpc.add_TaskHubSidecarServiceServicer_to_server(servicer, server)
    servicer.port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer
    await server.stop(0)


def endpoint(sidecar: Sidecar, auth: str = "Authentication=None") -> RemoteTarget:
    target = parse(f"Endpoint=http://127.0.0.1:{sidecar.port};TaskHub=orders;{auth}")
    assert isinstance(target, RemoteTarget)
    return target


@pytest.fixture
async def backend(sidecar: Sidecar) -> AsyncIterator[RemoteBackend]:
    remote = await RemoteBackend.connect(endpoint(sidecar))
    yield remote
    await remote.close()


def state(instance_id: str = "i1", status: int = pb.ORCHESTRATION_STATUS_RUNNING) -> Any:
    message = pb.OrchestrationState(instanceId=instance_id, name="orch", orchestrationStatus=status)
    message.createdTimestamp.FromDatetime(T0)
    message.lastUpdatedTimestamp.FromDatetime(T0)
    return message


def answer(response: Any) -> Handler:
    async def handle(request: Any, context: Any) -> Any:
        return response

    return handle


# --- metadata --------------------------------------------------------------------------------


async def test_every_call_names_the_task_hub_and_no_credentials(
    sidecar: Sidecar, backend: RemoteBackend
) -> None:
    await backend.get_instance("i1", False)
    await backend.raise_event("i1", "e", None)
    await backend.get_history("i1")
    assert [m for _, _, m in sidecar.calls] == [{"taskhub": "orders", **_ua(m)} for _, _, m in sidecar.calls]
    assert all("authorization" not in m for _, _, m in sidecar.calls)


def _ua(metadata: dict[str, str]) -> dict[str, str]:
    return {"user-agent": metadata["user-agent"]} if "user-agent" in metadata else {}


async def test_token_is_sent_as_bearer_on_every_call(sidecar: Sidecar) -> None:
    remote = await RemoteBackend.connect(endpoint(sidecar, "Authentication=Token;Token=s3cret"))
    try:
        await remote.get_instance("i1", False)
        await remote.lease_orchestrations(1)
        await _until(lambda: bool(sidecar.requests("GetWorkItems")))
    finally:
        await remote.close()
    assert {m["authorization"] for _, _, m in sidecar.calls} == {"Bearer s3cret"}
    assert {m["taskhub"] for _, _, m in sidecar.calls} == {"orders"}
    assert "duratask" in sidecar.calls[0][2]["user-agent"]


# --- client calls ------------------------------------------------------------------------------


async def test_start_sends_the_request_and_returns_the_id(sidecar: Sidecar, backend: RemoteBackend) -> None:
    start_at = datetime(2030, 1, 2, 3, 4, 5)  # naive: taken as UTC
    iid = await backend.start_orchestration(
        "orch", "i1", '"in"', start_at=start_at, version="2", tags={"k": "v"}
    )
    assert iid == "i1"
    (request,) = sidecar.requests("StartInstance")
    assert convert.start_request_from_pb(request) == convert.StartRequest(
        "orch", "i1", '"in"', start_at=start_at.replace(tzinfo=UTC), version="2", tags={"k": "v"}
    )
    await backend.start_orchestration("orch", "i2", None)
    assert not sidecar.requests("StartInstance")[1].HasField("scheduledStartTimestamp")


@pytest.mark.parametrize("bad_id", ["", "   ", "x" * 257, "tab\there"])
async def test_start_refuses_bad_ids_before_sending(
    sidecar: Sidecar, backend: RemoteBackend, bad_id: str
) -> None:
    # An empty id would mean "pick one for me" to StartInstance: it must not reach the wire.
    with pytest.raises(InvalidInstanceIdError):
        await backend.start_orchestration("orch", bad_id, None)
    with pytest.raises(ValueError):
        await backend.start_orchestration("", "ok", None)
    assert sidecar.requests("StartInstance") == []


async def test_get_instance_exists_false_is_none(sidecar: Sidecar, backend: RemoteBackend) -> None:
    assert await backend.get_instance("nope", True) is None
    assert sidecar.requests("GetInstance")[0].getInputsAndOutputs is True
    sidecar.handlers["GetInstance"] = answer(pb.GetInstanceResponse(exists=True, orchestrationState=state()))
    meta = await backend.get_instance("i1", False)
    assert meta is not None and meta.runtime_status is S.RUNNING and meta.created_at == T0


async def test_not_found_answers_read_as_missing_instances(sidecar: Sidecar, backend: RemoteBackend) -> None:
    for method in ("GetInstance", "WaitForInstanceStart"):
        sidecar.fail(method, Code.NOT_FOUND, "orchestration instance 'gone' not found")
    assert await backend.get_instance("gone", False) is None
    assert await backend.wait_for_instance("gone", "start", False, 5) is None
    sidecar.fail("GetInstance", Code.NOT_FOUND, "task hub 'orders' is not served here")
    with pytest.raises(TaskHubNotFoundError):
        await backend.get_instance("gone", False)


async def test_simple_operations_send_what_they_are_given(sidecar: Sidecar, backend: RemoteBackend) -> None:
    await backend.raise_event("i1", "approval", '{"ok": true}')
    await backend.terminate("i1", '"stop"', recursive=False)
    await backend.suspend("i1", "pause")
    await backend.resume("i1", None)
    raised, terminated = sidecar.requests("RaiseEvent")[0], sidecar.requests("TerminateInstance")[0]
    assert (raised.instanceId, raised.name, raised.input.value) == ("i1", "approval", '{"ok": true}')
    assert (terminated.output.value, terminated.recursive) == ('"stop"', False)
    assert sidecar.requests("SuspendInstance")[0].reason.value == "pause"
    assert not sidecar.requests("ResumeInstance")[0].HasField("reason")
    with pytest.raises(ValueError):
        await backend.raise_event("i1", "", None)


async def test_query_forwards_filters_and_paging(sidecar: Sidecar, backend: RemoteBackend) -> None:
    response = pb.QueryInstancesResponse(orchestrationState=[state("a"), state("b")])
    response.continuationToken.value = "page-2"
    sidecar.handlers["QueryInstances"] = answer(response)
    query = OrchestrationQuery(
        runtime_status=[S.RUNNING], instance_id_prefix="a", page_size=2, continuation_token="p1"
    )
    result = await backend.query_instances(query)
    assert [m.instance_id for m in result.instances] == ["a", "b"] and result.continuation_token == "page-2"
    assert convert.query_from_pb(sidecar.requests("QueryInstances")[0].query) == query
    with pytest.raises(ValueError, match="page_size"):
        await backend.query_instances(OrchestrationQuery(page_size=0))
    assert len(sidecar.requests("QueryInstances")) == 1


async def test_purge_by_id_and_by_filter_until_complete(sidecar: Sidecar, backend: RemoteBackend) -> None:
    sidecar.handlers["PurgeInstances"] = answer(pb.PurgeInstancesResponse(deletedInstanceCount=3))
    assert await backend.purge("p", recursive=True) == 3
    by_id = sidecar.requests("PurgeInstances")[0]
    assert (by_id.instanceId, by_id.recursive, by_id.isOrchestration) == ("p", True, True)

    rounds = iter([(5, False), (2, False), (1, True)])

    async def in_rounds(request: Any, context: Any) -> Any:
        count, complete = next(rounds)
        return pb.PurgeInstancesResponse(deletedInstanceCount=count, isComplete={"value": complete})

    sidecar.handlers["PurgeInstances"] = in_rounds
    assert await backend.purge_matching(PurgeInstancesFilter(runtime_status=[S.COMPLETED])) == 8
    filters = [r.purgeInstanceFilter for r in sidecar.requests("PurgeInstances")[1:]]
    assert len(filters) == 3 and all(
        list(f.runtimeStatus) == [pb.ORCHESTRATION_STATUS_COMPLETED] for f in filters
    )


async def test_history_arrives_in_chunks_and_skips_what_we_cannot_model(
    sidecar: Sidecar, backend: RemoteBackend
) -> None:
    started = h.ExecutionStarted(timestamp=T0, name="orch", instance_id="i1", execution_id="e")
    sidecar.history = [
        convert.event_to_pb(h.OrchestratorStarted(timestamp=T0)),
        convert.event_to_pb(started),
        pb.HistoryEvent(eventId=3, genericEvent=pb.GenericEvent()),
        convert.event_to_pb(h.EventRaised(timestamp=T0, name="go")),
    ]
    events = await backend.get_history("i1")
    assert [type(e).__name__ for e in events] == ["OrchestratorStarted", "ExecutionStarted", "EventRaised"]
    assert sidecar.requests("StreamInstanceHistory")[0].forWorkItemProcessing is False
    sidecar.fail("StreamInstanceHistory", Code.NOT_FOUND, "orchestration instance 'i1' not found")
    with pytest.raises(OrchestrationNotFoundError):
        await backend.get_history("i1")


# --- the status-code table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, message, expected",
    [
        (Code.NOT_FOUND, "orchestration instance 'i1' not found", OrchestrationNotFoundError),
        (Code.NOT_FOUND, "task hub 'orders' is not served here (served: default)", TaskHubNotFoundError),
        (Code.FAILED_PRECONDITION, "instance 'i1' is COMPLETED", InstanceStateError),
        (
            Code.RESOURCE_EXHAUSTED,
            "event data is 5000 bytes, over the limit of 1000 bytes",
            PayloadTooLargeError,
        ),
        (Code.INVALID_ARGUMENT, "instance id must not contain control characters", InvalidInstanceIdError),
        (Code.INVALID_ARGUMENT, "event name must be a non-empty string", ValueError),
        (Code.UNAUTHENTICATED, "no token", UnauthenticatedError),
        (Code.PERMISSION_DENIED, "wrong token", UnauthenticatedError),
        (Code.UNAVAILABLE, "going away", SchedulerUnavailableError),
        (Code.DEADLINE_EXCEEDED, "too slow", TimeoutError),
        (Code.INTERNAL, "boom", RemoteCallError),
        (Code.UNIMPLEMENTED, "not here", RemoteCallError),
    ],
)
async def test_status_codes_become_duratask_errors(
    sidecar: Sidecar, backend: RemoteBackend, code: grpc.StatusCode, message: str, expected: type[Exception]
) -> None:
    sidecar.fail("RaiseEvent", code, message)
    with pytest.raises(expected) as info:
        await backend.raise_event("i1", "e", None)
    error = info.value
    assert type(error) is expected  # the most specific class, not a parent
    if expected is OrchestrationNotFoundError:
        assert error.instance_id == "i1"  # type: ignore[attr-defined]
    if expected is PayloadTooLargeError:
        assert (error.size, error.limit) == (5000, 1000)  # type: ignore[attr-defined]
        assert str(error) == message
    if isinstance(error, RemoteCallError):
        assert error.code is code and message in str(error)
    if expected is not ValueError and expected is not TimeoutError:
        assert isinstance(error, DurableTaskError)


async def test_already_exists_names_the_instance(sidecar: Sidecar, backend: RemoteBackend) -> None:
    sidecar.fail("StartInstance", Code.ALREADY_EXISTS, "exists")
    with pytest.raises(OrchestrationAlreadyExistsError) as info:
        await backend.start_orchestration("orch", "dup", None)
    assert info.value.instance_id == "dup"


async def test_unreachable_scheduler_is_a_connection_error() -> None:
    target = parse("Endpoint=http://127.0.0.1:1;TaskHub=default;Authentication=None")
    assert isinstance(target, RemoteTarget)
    remote = await RemoteBackend.connect(target)
    try:
        with pytest.raises(SchedulerUnavailableError) as info:
            await remote.get_instance("x", False)
        assert isinstance(info.value, ConnectionError) and "127.0.0.1:1" in str(info.value)
    finally:
        await remote.close()


# --- waiting -------------------------------------------------------------------------------------


async def never_answer(request: Any, context: Any) -> Any:
    await asyncio.Event().wait()


async def test_wait_timeout_is_a_deadline(sidecar: Sidecar, backend: RemoteBackend) -> None:
    sidecar.handlers["WaitForInstanceStart"] = never_answer
    sidecar.handlers["GetInstance"] = answer(
        pb.GetInstanceResponse(exists=True, orchestrationState=state(status=pb.ORCHESTRATION_STATUS_PENDING))
    )
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="start"):
        await backend.wait_for_instance("i1", "start", False, 0.3)
    assert 0.25 < time.monotonic() - began < 2.0


async def test_wait_answers_and_missing_instances(sidecar: Sidecar, backend: RemoteBackend) -> None:
    done = state(status=pb.ORCHESTRATION_STATUS_COMPLETED)
    sidecar.handlers["WaitForInstanceCompletion"] = answer(
        pb.GetInstanceResponse(exists=True, orchestrationState=done)
    )
    meta = await backend.wait_for_instance("i1", "completion", True, 5)
    assert meta is not None and meta.runtime_status is S.COMPLETED
    assert sidecar.requests("WaitForInstanceCompletion")[0].getInputsAndOutputs is True
    sidecar.handlers["WaitForInstanceCompletion"] = answer(pb.GetInstanceResponse(exists=False))
    assert await backend.wait_for_instance("nope", "completion", False, 5) is None
    # A scheduler that waits out the deadline even for an unknown instance: still None, not a timeout.
    sidecar.handlers["WaitForInstanceCompletion"] = never_answer
    assert await backend.wait_for_instance("nope", "completion", False, 0.2) is None


async def test_wait_without_timeout_outlasts_long_polls(
    sidecar: Sidecar, backend: RemoteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_backend, "LONG_POLL_SECONDS", 0.1)
    polls = 0

    async def third_time_lucky(request: Any, context: Any) -> Any:
        nonlocal polls
        polls += 1
        assert context.time_remaining() is not None  # every poll carries a deadline
        if polls < 3:
            await context.abort(Code.DEADLINE_EXCEEDED, "server-side cap")
        return pb.GetInstanceResponse(
            exists=True, orchestrationState=state(status=pb.ORCHESTRATION_STATUS_COMPLETED)
        )

    sidecar.handlers["WaitForInstanceCompletion"] = third_time_lucky
    meta = await backend.wait_for_instance("i1", "completion", False, None)
    assert meta is not None and polls == 3


# --- the work-item stream ------------------------------------------------------------------------


STARTED = h.ExecutionStarted(timestamp=T0, name="orch", instance_id="i1", execution_id="e1", input="1")


def orchestrator_item(token: str, instance_id: str = "i1", **request: Any) -> Any:
    return pb.WorkItem(
        completionToken=token,
        orchestratorRequest=pb.OrchestratorRequest(
            instanceId=instance_id,
            newEvents=[
                convert.event_to_pb(h.OrchestratorStarted(timestamp=T0)),
                convert.event_to_pb(STARTED),
            ],
            **request,
        ),
    )


def activity_item(token: str, task_id: int = 0) -> Any:
    return pb.WorkItem(
        completionToken=token,
        activityRequest=pb.ActivityRequest(
            name="act", taskId=task_id, input={"value": "2"}, orchestrationInstance={"instanceId": "i1"}
        ),
    )


def stream_of(*items: Any, then: grpc.StatusCode | None = None) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def run(request: Any, context: Any) -> AsyncIterator[Any]:
        for item in items:
            yield item
        if then is not None:
            await context.abort(then, "stream dropped")
        await asyncio.Event().wait()

    return run


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_work_items_are_routed_by_kind(
    sidecar: Sidecar, backend: RemoteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_backend, "ENTITY_HANDBACK_DELAY_SECONDS", 0.0)
    entity = pb.WorkItem(completionToken="ent", entityRequestV2=pb.EntityRequest(instanceId="@counter@x"))
    sidecar.work_streams.append(
        stream_of(
            pb.WorkItem(healthPing=pb.HealthPing()),
            orchestrator_item("o1"),
            activity_item("a1", 0),
            entity,
            activity_item("a2", 1),
            orchestrator_item("o2", "i2"),
        )
    )
    assert await backend.lease_orchestrations(10) == []  # opens the stream; nothing has arrived yet
    await backend.wait_for_work("activity", 5)
    await _until(lambda: len(sidecar.requests("AbandonTaskEntityWorkItem")) == 1)
    first = await backend.lease_orchestrations(1)
    assert [i.token for i in first] == ["o1"]
    item = first[0]
    assert (item.instance_id, item.name, item.execution_id, item.history, item.history_length) == (
        "i1",
        "orch",
        "e1",
        None,  # left for get_history: a worker whose cache is warm does not need it
        0,
    )
    assert await backend.get_history("i1") == [] and sidecar.requests("StreamInstanceHistory") == []
    assert [type(e) for e in item.new_events] == [h.OrchestratorStarted, h.ExecutionStarted]
    assert [i.token for i in await backend.lease_orchestrations(10)] == ["o2"]
    activities = await backend.lease_activities(10)
    assert [(a.token, a.task_id, a.name, a.input) for a in activities] == [
        ("a1", 0, "act", "2"),
        ("a2", 1, "act", "2"),
    ]
    assert sidecar.requests("AbandonTaskEntityWorkItem")[0].completionToken == "ent"
    (request,) = sidecar.requests("GetWorkItems")
    assert list(request.capabilities) == [pb.WORKER_CAPABILITY_HISTORY_STREAMING]
    assert request.maxConcurrentOrchestrationWorkItems > 0 and request.maxConcurrentActivityWorkItems > 0
    assert request.worker_instance_id


async def test_wait_for_work_times_out_quietly_and_wakes_on_arrival(
    sidecar: Sidecar, backend: RemoteBackend
) -> None:
    arrive = asyncio.Event()

    async def later(request: Any, context: Any) -> AsyncIterator[Any]:
        await arrive.wait()
        yield activity_item("late")
        await asyncio.Event().wait()

    sidecar.work_streams.append(later)
    began = time.monotonic()
    await backend.wait_for_work("activity", 0.2)
    assert 0.15 < time.monotonic() - began < 1.5
    waiting = asyncio.create_task(backend.wait_for_work("activity", 10))
    await asyncio.sleep(0.05)
    arrive.set()
    await asyncio.wait_for(waiting, 5)
    await backend.wait_for_work("orchestration", 0.05)  # the other kind is not woken
    assert [a.token for a in await backend.lease_activities(5)] == ["late"]
    assert len(sidecar.requests("GetWorkItems")) == 1  # one stream for everything


async def test_history_left_out_is_streamed_for_the_work_item(
    sidecar: Sidecar, backend: RemoteBackend
) -> None:
    past = [
        h.OrchestratorStarted(timestamp=T0),
        STARTED,
        h.TaskScheduled(timestamp=T0, event_id=0, name="act"),
    ]
    sidecar.history = [convert.event_to_pb(e) for e in past]
    message = pb.WorkItem(
        completionToken="o1",
        orchestratorRequest=pb.OrchestratorRequest(
            instanceId="i1",
            requiresHistoryStreaming=True,
            newEvents=[convert.event_to_pb(h.TaskCompleted(timestamp=T0, task_scheduled_id=0, result="5"))],
        ),
    )
    sidecar.work_streams.append(stream_of(message))
    await backend.wait_for_work("orchestration", 5)
    (item,) = await backend.lease_orchestrations(5)
    assert item.history is None and item.history_length == 3 and item.name == "orch"
    (request,) = sidecar.requests("StreamInstanceHistory")
    assert request.instanceId == "i1" and request.forWorkItemProcessing is True
    assert await backend.get_history("i1") == past  # the history fetched for the item: no second call
    assert len(sidecar.requests("StreamInstanceHistory")) == 1


async def test_leased_history_is_served_until_the_item_is_settled(
    sidecar: Sidecar, backend: RemoteBackend
) -> None:
    past = [
        h.OrchestratorStarted(timestamp=T0),
        STARTED,
        h.TimerCreated(timestamp=T0, event_id=0, fire_at=T0),
    ]
    new = [h.OrchestratorStarted(timestamp=T0), h.TimerFired(timestamp=T0, fire_at=T0, timer_id=0)]
    message = pb.WorkItem(
        completionToken="o1",
        orchestratorRequest=pb.OrchestratorRequest(
            instanceId="i1",
            pastEvents=[convert.event_to_pb(e) for e in past],
            newEvents=[convert.event_to_pb(e) for e in new],
        ),
    )
    (item,), _ = await leased(sidecar, backend, message)
    assert (item.history, item.history_length, item.name, item.new_events) == (None, 3, "orch", new)
    assert await backend.get_history("i1") == past
    assert sidecar.requests("StreamInstanceHistory") == []
    await backend.complete_orchestrations([(item, OrchestrationResult(actions=[]))])
    sidecar.history = [convert.event_to_pb(e) for e in past + new]
    assert await backend.get_history("i1") == past + new  # settled: asked of the scheduler again


async def test_history_that_cannot_be_fetched_hands_the_item_back(
    sidecar: Sidecar, backend: RemoteBackend
) -> None:
    sidecar.fail("StreamInstanceHistory", Code.INTERNAL, "disk on fire")
    sidecar.work_streams.append(stream_of(orchestrator_item("o1", requiresHistoryStreaming=True)))
    await backend.wait_for_work("orchestration", 5)
    assert await backend.lease_orchestrations(5) == []
    assert [r.completionToken for r in sidecar.requests("AbandonTaskOrchestratorWorkItem")] == ["o1"]


async def test_work_item_we_cannot_model_fails_its_instance(sidecar: Sidecar, backend: RemoteBackend) -> None:
    entity_event = pb.HistoryEvent(
        eventId=1, entityLockGranted=pb.EntityLockGrantedEvent(criticalSectionId="c")
    )
    sidecar.work_streams.append(stream_of(orchestrator_item("o1", pastEvents=[entity_event])))
    await backend.wait_for_work("orchestration", 5)
    assert await backend.lease_orchestrations(5) == []
    (response,) = sidecar.requests("CompleteOrchestratorTask")
    assert (response.instanceId, response.completionToken) == ("i1", "o1")
    (action,) = convert.orchestration_result_from_pb(response).actions
    assert isinstance(action, h.CompleteOrchestration) and action.status is S.FAILED
    assert action.failure is not None and "UnsupportedMessageError" in action.failure.error_type


async def test_stream_reconnects_and_forgets_items_of_the_dropped_stream(
    sidecar: Sidecar, backend: RemoteBackend
) -> None:
    sidecar.work_streams.append(stream_of(activity_item("old"), then=Code.UNAVAILABLE))
    sidecar.work_streams.append(stream_of(activity_item("new")))
    await backend.lease_activities(1)
    await _until(lambda: len(sidecar.requests("GetWorkItems")) == 2)
    await backend.wait_for_work("activity", 5)
    assert [a.token for a in await backend.lease_activities(5)] == ["new"]


async def test_stream_reconnects_after_a_graceful_end(
    sidecar: Sidecar, backend: RemoteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(work_stream, "RECONNECT_MIN_SECONDS", 0.01)

    async def ends(request: Any, context: Any) -> AsyncIterator[Any]:
        yield pb.WorkItem(healthPing=pb.HealthPing())

    sidecar.work_streams += [ends, ends, stream_of(activity_item("third"))]
    await backend.wait_for_work("activity", 5)
    assert [a.token for a in await backend.lease_activities(5)] == ["third"]
    assert len(sidecar.requests("GetWorkItems")) == 3


# --- completions ---------------------------------------------------------------------------------


async def leased(sidecar: Sidecar, backend: RemoteBackend, *items: Any) -> tuple[list[Any], list[Any]]:
    sidecar.work_streams.append(stream_of(*items))
    orchestrations: list[Any] = []
    activities: list[Any] = []
    deadline = time.monotonic() + 5
    while len(orchestrations) + len(activities) < len(items):
        assert time.monotonic() < deadline
        orchestrations += await backend.lease_orchestrations(10)
        activities += await backend.lease_activities(10)
        await asyncio.sleep(0.01)
    return orchestrations, activities


async def test_orchestration_completions_refused_for_stale_tokens(
    sidecar: Sidecar, backend: RemoteBackend
) -> None:
    async def by_token(request: Any, context: Any) -> Any:
        refusals = {"stale": Code.ABORTED, "gone": Code.NOT_FOUND, "late": Code.FAILED_PRECONDITION}
        if request.completionToken in refusals:
            await context.abort(refusals[request.completionToken], "lease lost")
        return None

    sidecar.handlers["CompleteOrchestratorTask"] = by_token
    items, _ = await leased(
        sidecar, backend, *(orchestrator_item(t, f"i-{t}") for t in ("good", "stale", "gone", "late"))
    )
    result = OrchestrationResult(
        actions=[h.ScheduleTask(id=0, name="act", input="1")], custom_status='"half"'
    )
    assert await backend.complete_orchestrations([(i, result) for i in items]) == [True, False, False, False]
    sent = {r.completionToken: r for r in sidecar.requests("CompleteOrchestratorTask")}
    assert (
        convert.orchestration_result_from_pb(sent["good"]) == result and sent["good"].instanceId == "i-good"
    )


async def test_activity_completions_carry_results_and_failures(
    sidecar: Sidecar, backend: RemoteBackend
) -> None:
    async def by_token(request: Any, context: Any) -> Any:
        if request.completionToken == "stale":
            await context.abort(Code.ABORTED, "lease lost")

    sidecar.handlers["CompleteActivityTask"] = by_token
    _, items = await leased(
        sidecar, backend, activity_item("ok", 0), activity_item("bad", 1), activity_item("stale", 2)
    )
    failure = TaskFailureDetails(error_type="ValueError", error_message="boom", stack_trace="tb")
    outcomes = [
        h.TaskCompleted(timestamp=T0, task_scheduled_id=0, result='"r"'),
        h.TaskFailed(timestamp=T0, task_scheduled_id=1, failure=failure),
        h.TaskCompleted(timestamp=T0, task_scheduled_id=2),
    ]
    assert await backend.complete_activities(list(zip(items, outcomes))) == [True, True, False]
    sent = {r.completionToken: r for r in sidecar.requests("CompleteActivityTask")}
    assert sent["ok"].result.value == '"r"' and not sent["ok"].HasField("failureDetails")
    assert convert.failure_from_pb(sent["bad"].failureDetails) == failure and sent["bad"].taskId == 1


async def test_oversized_results_fail_instead_of_looping(sidecar: Sidecar, backend: RemoteBackend) -> None:
    too_big = "result is 9000 bytes, over the limit of 10 bytes"

    async def refuse_scheduling(request: Any, context: Any) -> Any:
        if any(a.HasField("scheduleTask") for a in request.actions):
            await context.abort(Code.RESOURCE_EXHAUSTED, too_big)

    async def refuse_results(request: Any, context: Any) -> Any:
        if request.HasField("result"):
            await context.abort(Code.RESOURCE_EXHAUSTED, too_big)

    sidecar.handlers["CompleteOrchestratorTask"] = refuse_scheduling
    sidecar.handlers["CompleteActivityTask"] = refuse_results
    orchestrations, activities = await leased(sidecar, backend, orchestrator_item("o1"), activity_item("a1"))
    big = OrchestrationResult(actions=[h.ScheduleTask(id=0, name="act", input='"' + "x" * 9000 + '"')])
    assert await backend.complete_orchestrations([(orchestrations[0], big)]) == [True]
    _, second = sidecar.requests("CompleteOrchestratorTask")
    (action,) = convert.orchestration_result_from_pb(second).actions
    assert isinstance(action, h.CompleteOrchestration) and action.status is S.FAILED
    assert action.failure is not None and "over the limit" in action.failure.error_message
    outcome = h.TaskCompleted(timestamp=T0, task_scheduled_id=0, result='"' + "y" * 9000 + '"')
    assert await backend.complete_activities([(activities[0], outcome)]) == [True]
    retried = sidecar.requests("CompleteActivityTask")[1]
    assert retried.HasField("failureDetails") and "PayloadTooLarge" in retried.failureDetails.errorType


async def test_invalid_results_are_not_applied_and_not_resent(
    sidecar: Sidecar, backend: RemoteBackend
) -> None:
    # duratask serve refuses a replay out of step with the history: False lets the worker replay afresh.
    sidecar.fail("CompleteOrchestratorTask", Code.INVALID_ARGUMENT, "the worker's replay is out of step")
    (item,), _ = await leased(sidecar, backend, orchestrator_item("o1"))
    odd = OrchestrationResult(actions=[h.CreateTimer(id=0, fire_at=T0)])
    assert await backend.complete_orchestrations([(item, odd)]) == [False]
    assert len(sidecar.requests("CompleteOrchestratorTask")) == 1


async def test_abandon_hands_back_and_swallows_refusals(sidecar: Sidecar, backend: RemoteBackend) -> None:
    orchestrations, activities = await leased(sidecar, backend, orchestrator_item("o1"), activity_item("a1"))
    sidecar.fail("AbandonTaskActivityWorkItem", Code.NOT_FOUND, "unknown token")
    await backend.abandon_orchestration(orchestrations[0])
    await backend.abandon_activity(activities[0])  # refused: nothing to do about it
    assert sidecar.requests("AbandonTaskOrchestratorWorkItem")[0].completionToken == "o1"
    assert sidecar.requests("AbandonTaskActivityWorkItem")[0].completionToken == "a1"


def fed_by(feed: asyncio.Queue[Any]) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def run(request: Any, context: Any) -> AsyncIterator[Any]:
        while True:
            yield await feed.get()

    return run


async def test_close_hands_back_everything_held(sidecar: Sidecar) -> None:
    feed: asyncio.Queue[Any] = asyncio.Queue()
    sidecar.work_streams.append(fed_by(feed))
    remote = await RemoteBackend.connect(endpoint(sidecar))
    for item in (orchestrator_item("done"), orchestrator_item("held", "i2"), activity_item("busy")):
        feed.put_nowait(item)
    await remote.wait_for_work("activity", 5)
    await _until(lambda: feed.empty())
    await remote.wait_for_work("orchestration", 5)
    orchestrations = await remote.lease_orchestrations(10)
    assert [i.token for i in orchestrations] == ["done", "held"] and len(
        await remote.lease_activities(10)
    ) == 1
    assert await remote.complete_orchestrations([(orchestrations[0], OrchestrationResult(actions=[]))]) == [
        True
    ]
    feed.put_nowait(orchestrator_item("queued", "i9"))  # arrives, never leased
    await remote.wait_for_work("orchestration", 5)
    await remote.close()
    handed_back = {r.completionToken for r in sidecar.requests("AbandonTaskOrchestratorWorkItem")}
    assert handed_back == {"held", "queued"}  # "done" was completed: not handed back
    assert [r.completionToken for r in sidecar.requests("AbandonTaskActivityWorkItem")] == ["busy"]
    with pytest.raises(RemoteCallError, match="closed"):
        await remote.get_instance("i1", False)
    with pytest.raises(RemoteCallError, match="closed"):
        await remote.get_history("i1")
    assert await remote.lease_orchestrations(5) == []  # no stream is opened again
    assert len(sidecar.requests("GetWorkItems")) == 1


async def test_close_does_not_wait_long_for_hand_backs(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_backend, "ABANDON_ON_CLOSE_SECONDS", 0.2)
    sidecar.handlers["AbandonTaskOrchestratorWorkItem"] = never_answer
    remote = await RemoteBackend.connect(endpoint(sidecar))
    await leased(sidecar, remote, orchestrator_item("held"))
    began = time.monotonic()
    await remote.close()
    assert time.monotonic() - began < 2.0
    assert len(sidecar.requests("AbandonTaskOrchestratorWorkItem")) == 1
