"""duratask.protocol.convert, the request and work-item half: what RemoteBackend sends and reads.

Both directions of each mapping, plus the protocol's conventions that are easy to get wrong
(absent versus empty, 0 as "unset", history fetched separately, official-SDK-built messages).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from duratask import history as h
from duratask.backend.api import ActivityWorkItem, OrchestrationResult, OrchestrationWorkItem
from duratask.models import (
    OrchestrationMetadata,
    OrchestrationQuery,
    OrchestrationQueryResult,
    PurgeInstancesFilter,
    TaskFailureDetails,
)
from duratask.models import (
    OrchestrationRuntimeStatus as S,
)
from duratask.protocol import convert, pb

T0 = datetime(2024, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)


def test_start_request_both_ways_and_scheduled_start() -> None:
    request = convert.StartRequest(
        name="orch", instance_id="i1", input='{"a": 1}', start_at=T1, version="2", tags={"k": "v"}
    )
    message = convert.start_request_to_pb(request)
    assert message.instanceId == "i1" and message.name == "orch" and message.input.value == '{"a": 1}'
    assert message.scheduledStartTimestamp.ToDatetime(tzinfo=UTC) == T1
    assert (
        convert.start_request_from_pb(pb.CreateInstanceRequest.FromString(message.SerializeToString()))
        == request
    )


def test_start_request_leaves_unset_fields_absent() -> None:
    message = convert.start_request_to_pb(convert.StartRequest(name="orch", instance_id="i1"))
    for field in ("input", "scheduledStartTimestamp", "version"):
        assert not message.HasField(field), field
    assert convert.start_request_from_pb(message) == convert.StartRequest(name="orch", instance_id="i1")


def test_instance_response_exists_flag() -> None:
    assert convert.instance_response_from_pb(pb.GetInstanceResponse(exists=False)) is None
    meta = OrchestrationMetadata(
        instance_id="i", name="n", runtime_status=S.RUNNING, created_at=T0, last_updated_at=T1
    )
    assert convert.instance_response_from_pb(convert.instance_response_to_pb(meta)) == meta
    assert convert.instance_response_to_pb(None).exists is False


def test_query_both_ways_with_every_filter() -> None:
    query = OrchestrationQuery(
        runtime_status=[S.RUNNING, S.FAILED],
        created_from=T0,
        created_to=T1,
        instance_id_prefix="q%_",
        task_hub_names=["a", "b"],
        page_size=7,
        continuation_token="opaque",
    )
    message = convert.query_to_pb(query)
    assert message.fetchInputsAndOutputs is True
    assert list(message.runtimeStatus) == [pb.ORCHESTRATION_STATUS_RUNNING, pb.ORCHESTRATION_STATUS_FAILED]
    assert [s.value for s in message.taskHubNames] == ["a", "b"] and message.maxInstanceCount == 7
    assert convert.query_from_pb(message) == query


def test_query_unset_filters_stay_unset_and_zero_page_size_is_the_default() -> None:
    message = convert.query_to_pb(OrchestrationQuery())
    for field in ("createdTimeFrom", "createdTimeTo", "instanceIdPrefix", "continuationToken"):
        assert not message.HasField(field), field
    assert not message.runtimeStatus and not message.taskHubNames
    assert convert.query_from_pb(message) == OrchestrationQuery()
    empty = pb.InstanceQuery(
        maxInstanceCount=0, instanceIdPrefix={"value": ""}, continuationToken={"value": ""}
    )
    assert convert.query_from_pb(empty) == OrchestrationQuery()


def test_query_result_and_last_page() -> None:
    meta = OrchestrationMetadata(
        instance_id="i",
        name="n",
        runtime_status=S.COMPLETED,
        created_at=T0,
        last_updated_at=T1,
        serialized_output='"x"',
    )
    result = OrchestrationQueryResult(instances=[meta], continuation_token="next")
    assert convert.query_result_from_pb(convert.query_result_to_pb(result)) == result
    last = convert.query_result_to_pb(OrchestrationQueryResult(instances=[meta]))
    assert not last.HasField("continuationToken")
    assert convert.query_result_from_pb(last).continuation_token is None
    empty_token = pb.QueryInstancesResponse(continuationToken={"value": ""})
    assert convert.query_result_from_pb(empty_token) == OrchestrationQueryResult()


def test_purge_filter_both_ways() -> None:
    for purge in (PurgeInstancesFilter(), PurgeInstancesFilter(T0, T1, [S.COMPLETED, S.TERMINATED])):
        assert convert.purge_filter_from_pb(convert.purge_filter_to_pb(purge)) == purge


STARTED = h.ExecutionStarted(timestamp=T0, name="orch", instance_id="i1", execution_id="e1", input="3")


def test_orchestration_work_item_full_history_name_and_length() -> None:
    past = [h.OrchestratorStarted(timestamp=T0), STARTED, h.TaskScheduled(timestamp=T0, event_id=0, name="a")]
    new = [
        h.OrchestratorStarted(timestamp=T1),
        h.TaskCompleted(timestamp=T1, task_scheduled_id=0, result="1"),
    ]
    item = OrchestrationWorkItem(
        instance_id="i1",
        execution_id="e1",
        name="orch",
        token="tok",
        new_events=new,
        history_length=3,
        history=past,
    )
    message = convert.orchestration_work_item_to_pb(item)
    assert message.completionToken == "tok" and len(message.orchestratorRequest.pastEvents) == 3
    assert convert.orchestration_work_item_from_pb(message) == item


def test_orchestration_work_item_first_episode_takes_name_from_new_events() -> None:
    message = pb.WorkItem(
        completionToken="7",
        orchestratorRequest=pb.OrchestratorRequest(
            instanceId="i1",
            newEvents=[
                convert.event_to_pb(h.OrchestratorStarted(timestamp=T0)),
                convert.event_to_pb(STARTED),
            ],
        ),
    )
    item = convert.orchestration_work_item_from_pb(message)
    assert (item.name, item.execution_id, item.history, item.history_length) == ("orch", "e1", [], 0)


def test_orchestration_work_item_without_history_needs_it_passed() -> None:
    item = OrchestrationWorkItem(
        instance_id="i1", execution_id="e1", name="orch", token="t", new_events=[], history_length=1
    )
    message = convert.orchestration_work_item_to_pb(item)
    assert message.orchestratorRequest.requiresHistoryStreaming
    with pytest.raises(ValueError, match="past_events"):
        convert.orchestration_work_item_from_pb(message)
    fetched = convert.orchestration_work_item_from_pb(message, [convert.event_to_pb(STARTED)])
    assert fetched.history == [STARTED] and fetched.history_length == 1 and fetched.name == "orch"


def test_orchestration_work_item_with_entity_event_is_unsupported() -> None:
    entity = pb.HistoryEvent(eventId=1, entityLockGranted=pb.EntityLockGrantedEvent(criticalSectionId="c"))
    message = pb.WorkItem(orchestratorRequest=pb.OrchestratorRequest(instanceId="i", pastEvents=[entity]))
    with pytest.raises(convert.UnsupportedMessageError):
        convert.orchestration_work_item_from_pb(message)


def test_activity_work_item_both_ways() -> None:
    item = ActivityWorkItem(
        instance_id="i1", execution_id="e1", task_id=4, name="act", input="[1]", token="t9", version="2"
    )
    assert convert.activity_work_item_from_pb(convert.activity_work_item_to_pb(item)) == item
    bare = ActivityWorkItem(instance_id="i1", execution_id="", task_id=0, name="act", input=None, token="t")
    message = convert.activity_work_item_to_pb(bare)
    assert not message.activityRequest.orchestrationInstance.HasField("executionId")
    assert not message.activityRequest.HasField("input")
    assert convert.activity_work_item_from_pb(message) == bare


def test_orchestration_result_both_ways() -> None:
    item = OrchestrationWorkItem(
        instance_id="i1", execution_id="e1", name="o", token="tok", new_events=[], history_length=0
    )
    result = OrchestrationResult(
        actions=[
            h.ScheduleTask(id=0, name="a", input="1"),
            h.CompleteOrchestration(id=1, status=S.COMPLETED, result='"ok"'),
        ],
        custom_status='"half"',
    )
    message = convert.orchestration_result_to_pb(item, result)
    assert message.instanceId == "i1" and message.completionToken == "tok"
    assert convert.orchestration_result_from_pb(message) == result
    quiet = convert.orchestration_result_to_pb(item, OrchestrationResult(actions=[]))
    assert not quiet.HasField("customStatus")


def test_activity_outcomes_both_ways() -> None:
    item = ActivityWorkItem(instance_id="i1", execution_id="e1", task_id=3, name="a", input=None, token="t")
    done = h.TaskCompleted(timestamp=T0, task_scheduled_id=3, result='"r"')
    message = convert.activity_outcome_to_pb(item, done)
    assert (message.instanceId, message.taskId, message.completionToken) == ("i1", 3, "t")
    assert not message.HasField("failureDetails")
    assert convert.activity_outcome_from_pb(message, T0) == done
    none_result = h.TaskCompleted(timestamp=T0, task_scheduled_id=3)
    assert (
        convert.activity_outcome_from_pb(convert.activity_outcome_to_pb(item, none_result), T0) == none_result
    )
    # A failure with an empty message is still a failure: presence, not content, decides.
    failed = h.TaskFailed(
        timestamp=T0, task_scheduled_id=3, failure=TaskFailureDetails(error_type="E", error_message="")
    )
    message = convert.activity_outcome_to_pb(item, failed)
    assert message.HasField("failureDetails")
    assert convert.activity_outcome_from_pb(message, T0) == failed


def test_orchestration_work_item_without_converting_the_history() -> None:
    past = [h.OrchestratorStarted(timestamp=T0), STARTED, h.TaskScheduled(timestamp=T0, event_id=0, name="a")]
    message = pb.WorkItem(
        completionToken="t",
        orchestratorRequest=pb.OrchestratorRequest(
            instanceId="i1", pastEvents=[convert.event_to_pb(e) for e in past]
        ),
    )
    item = convert.orchestration_work_item_from_pb(message, with_history=False)
    assert (item.history, item.history_length, item.name, item.execution_id) == (None, 3, "orch", "e1")
    assert convert.history_from_pb(message.orchestratorRequest.pastEvents) == past
    entity = pb.HistoryEvent(eventId=1, entityLockGranted=pb.EntityLockGrantedEvent(criticalSectionId="c"))
    message.orchestratorRequest.pastEvents.append(entity)
    with pytest.raises(convert.UnsupportedMessageError, match="entityLockGranted"):
        convert.orchestration_work_item_from_pb(message, with_history=False)
    with pytest.raises(convert.UnsupportedMessageError):
        convert.check_supported([pb.HistoryEvent(eventId=1)])  # no kind at all
