"""duratask.protocol.convert for durable entities: messages the official Python SDK builds decode as
expected, and what we send reads back the way the SDK reads it (test-only use of the peer package)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from duratask import history as h
from duratask.backend import entities as e
from duratask.models import TaskFailureDetails
from duratask.protocol import convert, pb

official = pytest.importorskip("durabletask.internal.orchestrator_service_pb2")
helpers = pytest.importorskip("durabletask.internal.helpers")
client_helpers = pytest.importorskip("durabletask.internal.client_helpers")
from durabletask.client import EntityQuery as OfficialQuery
from durabletask.entities import EntityInstanceId
from durabletask.entities.entity_metadata import EntityMetadata as OfficialMetadata
from durabletask.internal.orchestration_entity_context import OrchestrationEntityContext

T0 = datetime(2024, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COUNTER = EntityInstanceId("Counter", "k")


def ours(message: Any) -> Any:
    return getattr(pb, type(message).DESCRIPTOR.name).FromString(message.SerializeToString())


def theirs(message: Any) -> Any:
    return getattr(official, type(message).DESCRIPTOR.name).FromString(message.SerializeToString())


def test_the_official_entity_actions_decode() -> None:
    call = convert.action_from_pb(
        ours(helpers.new_call_entity_action(3, "orch", COUNTER, "add", "5", "req-1"))
    )
    assert call == h.SendEntityMessage(
        id=3,
        message=h.EntityOperationCalled(
            timestamp=EPOCH,
            request_id="req-1",
            operation="add",
            input="5",
            parent_instance_id="orch",
            target_instance_id="@counter@k",
        ),
    )
    later = T0 + timedelta(hours=1)
    sig = convert.action_from_pb(
        ours(helpers.new_signal_entity_action(4, COUNTER, "add", None, "req-2", later))
    )
    assert isinstance(sig, h.SendEntityMessage) and isinstance(sig.message, h.EntityOperationSignaled)
    assert (sig.message.scheduled_time, sig.message.input, sig.message.target_instance_id) == (
        later,
        None,
        "@counter@k",
    )

    context = OrchestrationEntityContext("orch")
    other = EntityInstanceId("Counter", "a")
    request, _ = context.emit_acquire_message("cs-1", [COUNTER, other, COUNTER])
    locked = convert.action_from_pb(ours(helpers.new_lock_entities_action(5, request)))
    assert locked == h.SendEntityMessage(
        id=5,
        message=h.EntityLockRequested(
            timestamp=EPOCH,
            critical_section_id="cs-1",
            lock_set=["@counter@a", "@counter@k"],  # sorted, once each
            position=0,
            parent_instance_id="orch",
        ),
    )
    context.complete_acquire("cs-1")
    unlocks = [
        convert.action_from_pb(ours(official.OrchestratorAction(id=6 + n, sendEntityMessage=message)))
        for n, message in enumerate(context.emit_lock_release_messages())
    ]
    assert [u.message.target_instance_id for u in unlocks] == ["@counter@a", "@counter@k"]  # type: ignore[union-attr]
    assert all(u.message.critical_section_id == "cs-1" for u in unlocks)  # type: ignore[union-attr]
    for action in (call, sig, locked, *unlocks):
        assert isinstance(action, h.SendEntityMessage)
        e.validate_message(action.message)


def test_a_send_entity_message_without_a_message_is_refused() -> None:
    empty = pb.OrchestratorAction(id=1)
    empty.sendEntityMessage.SetInParent()
    with pytest.raises(convert.UnsupportedMessageError, match="sendEntityMessage"):
        convert.action_from_pb(empty)


def work_item() -> e.EntityWorkItem:
    return e.EntityWorkItem(
        instance_id="@counter@k",
        execution_id="x1",
        name="counter",
        token="tok",
        state="5",
        operations=[
            h.EntityOperationSignaled(timestamp=T0, request_id="s1", operation="add", input="1"),
            h.EntityOperationCalled(
                timestamp=T0,
                request_id="c1",
                operation="get",
                parent_instance_id="orch",
                parent_execution_id="o1",
            ),
        ],
    )


def test_the_sdk_reads_a_batch_sent_as_entity_request_v2() -> None:
    message = theirs(convert.entity_work_item_to_pb(work_item()))
    assert message.WhichOneof("request") == "entityRequestV2" and message.completionToken == "tok"
    batch, infos = helpers.convert_to_entity_batch_request(message.entityRequestV2)
    assert batch.instanceId == "@counter@k" and batch.entityState.value == "5"
    assert [(o.operation, o.requestId, o.input.value) for o in batch.operations] == [
        ("add", "s1", "1"),
        ("get", "c1", ""),
    ]
    assert not infos[0].HasField("responseDestination")
    assert infos[1].responseDestination.instanceId == "orch"


def test_the_sdk_reads_a_batch_sent_as_entity_request() -> None:
    item = work_item()
    item.state = None
    message = theirs(convert.entity_work_item_to_pb(item, v2=False))
    assert message.WhichOneof("request") == "entityRequest"
    request = message.entityRequest
    assert request.instanceId == "@counter@k" and not request.HasField("entityState")
    assert [(o.operation, o.requestId, o.HasField("input")) for o in request.operations] == [
        ("add", "s1", True),
        ("get", "c1", False),
    ]


def test_an_official_batch_result_decodes() -> None:
    failure = official.TaskFailureDetails(errorType="ValueError", errorMessage="no")
    result = official.EntityBatchResult(completionToken="tok")
    result.results.add().success.result.value = "6"
    result.results.add().failure.failureDetails.CopyFrom(failure)
    result.results.add().success.SetInParent()
    signal = result.actions.add(id=1).sendSignal
    signal.instanceId, signal.name = "@other@a", "ping"
    signal.scheduledTime.FromDatetime(T0)
    start = result.actions.add(id=2).startNewOrchestration
    start.instanceId, start.name = "job-1", "job"
    start.input.value = "[1]"
    result.entityState.value = "6"
    result.operationInfos.add(requestId="ignored")

    outcome = convert.entity_batch_result_from_pb(ours(result))

    assert outcome == e.EntityBatchOutcome(
        results=[
            e.OperationSucceeded(result="6"),
            e.OperationFailed(failure=TaskFailureDetails(error_type="ValueError", error_message="no")),
            e.OperationSucceeded(),
        ],
        actions=[
            e.SignalEntityAction(instance_id="@other@a", operation="ping", scheduled_time=T0),
            e.StartOrchestrationAction(instance_id="job-1", name="job", input="[1]"),
        ],
        state="6",
    )
    assert convert.entity_batch_result_from_pb(convert.entity_batch_result_to_pb(outcome, "tok")) == outcome
    whole = e.EntityBatchOutcome(results=[], failure=TaskFailureDetails(error_type="E", error_message="m"))
    assert convert.entity_batch_result_from_pb(convert.entity_batch_result_to_pb(whole, "t")) == whole


def test_a_result_of_no_kind_is_refused() -> None:
    result = pb.EntityBatchResult(completionToken="tok")
    result.results.add()
    with pytest.raises(convert.UnsupportedMessageError, match="resultType"):
        convert.entity_batch_result_from_pb(result)
    result = pb.EntityBatchResult(completionToken="tok")
    result.actions.add(id=1)
    with pytest.raises(convert.UnsupportedMessageError, match="operationActionType"):
        convert.entity_batch_result_from_pb(result)


def test_an_official_signal_request_decodes() -> None:
    later = T0 + timedelta(minutes=3)
    request = client_helpers.build_signal_entity_req(COUNTER, "add", 5, later)
    signal = convert.signal_request_from_pb(ours(request))
    assert (signal.instance_id, signal.operation, signal.input, signal.scheduled_time) == (
        "@counter@k",
        "add",
        "5",
        later,
    )
    assert signal.request_id == request.requestId
    assert convert.signal_request_from_pb(convert.signal_request_to_pb(signal)) == signal


def test_entity_metadata_reads_back_in_the_sdk() -> None:
    metadata = e.EntityMetadata(
        instance_id="@counter@k",
        last_modified=T0,
        backlog_queue_size=2,
        locked_by="orch",
        serialized_state="5",
    )
    response = theirs(convert.entity_response_to_pb(metadata))
    assert response.exists
    read = OfficialMetadata.from_entity_metadata(response.entity, True, None)
    assert (read.id, read.last_modified, read.backlog_queue_size, read.get_state()) == (COUNTER, T0, 2, "5")
    assert read._locked_by == "orch"
    assert convert.entity_metadata_from_pb(convert.entity_metadata_to_pb(metadata)) == metadata
    assert not theirs(convert.entity_response_to_pb(None)).exists


def test_an_official_entity_query_decodes() -> None:
    query = OfficialQuery(
        instance_id_starts_with="@counter", last_modified_from=T0, include_state=False, page_size=7
    )
    ours_query = convert.entity_query_from_pb(
        ours(client_helpers.build_query_entities_req(query, None)).query
    )
    assert ours_query == e.EntityQuery(
        instance_id_starts_with="@counter", last_modified_from=T0, include_state=False, page_size=7
    )
    assert convert.entity_query_from_pb(pb.EntityQuery()) == e.EntityQuery(include_state=False)
    page = convert.entity_query_result_to_pb(e.EntityQueryResult(entities=[], continuation_token="next"))
    assert page.continuationToken.value == "next"
    assert not convert.entity_query_result_to_pb(e.EntityQueryResult(entities=[])).HasField(
        "continuationToken"
    )
    cleaned = convert.clean_entity_storage_result_to_pb(
        e.CleanEntityStorageResult(empty_entities_removed=3, orphaned_locks_released=1)
    )
    assert (cleaned.emptyEntitiesRemoved, cleaned.orphanedLocksReleased) == (3, 1)
    assert not cleaned.HasField("continuationToken")


def test_duratask_own_worker_refuses_orchestrations_that_use_entities() -> None:
    granted = convert.event_to_pb(h.EntityLockGranted(timestamp=T0, critical_section_id="cs"))
    message = pb.WorkItem(orchestratorRequest=pb.OrchestratorRequest(instanceId="i", newEvents=[granted]))
    with pytest.raises(convert.UnsupportedMessageError, match="entityLockGranted"):
        convert.orchestration_work_item_from_pb(message)
    assert convert.event_from_pb(granted) == h.EntityLockGranted(timestamp=T0, critical_section_id="cs")
