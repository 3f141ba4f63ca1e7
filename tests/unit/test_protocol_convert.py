"""duratask.protocol.convert: our event model <-> protocol messages, both ways.

Round trips cover every event and action kind with every field set, and messages built by the
official Python SDK's own helpers (test-only use of the peer package) decode as expected.
"""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from duratask import history as h
from duratask.models import OrchestrationMetadata, OrchestrationRuntimeStatus, TaskFailureDetails
from duratask.protocol import convert, pb

official = pytest.importorskip("durabletask.internal.orchestrator_service_pb2")
helpers = pytest.importorskip("durabletask.internal.helpers")

T0 = datetime(2024, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
RUNNING, COMPLETED = OrchestrationRuntimeStatus.RUNNING, OrchestrationRuntimeStatus.COMPLETED

FAILURE = TaskFailureDetails(
    error_type="ValueError",
    error_message="bad input",
    stack_trace="Traceback ...",
    inner_failure=TaskFailureDetails(error_type="KeyError", error_message="'k'", is_non_retriable=True),
    is_non_retriable=True,
)

# Every kind, every field away from its default (checked by test_samples_leave_no_field_at_default).
FULL_EVENTS: list[h.HistoryEvent] = [
    h.ExecutionStarted(
        timestamp=T0,
        event_id=1,
        name="orch",
        instance_id="inst",
        execution_id="exec-1",
        input='{"a": 1}',
        version="2.0",
        parent=h.ParentInstance(
            instance_id="parent", name="parent-orch", task_scheduled_id=4, execution_id="pe", version="1"
        ),
        scheduled_start=T1,
        tags={"team": "blue", "tier": "gold"},
    ),
    h.ExecutionCompleted(timestamp=T0, event_id=2, status=COMPLETED, result='"done"', failure=FAILURE),
    h.ExecutionTerminated(timestamp=T0, event_id=3, input='"stop"', recurse=True),
    h.ExecutionSuspended(timestamp=T0, event_id=4, input='"pause"'),
    h.ExecutionResumed(timestamp=T0, event_id=5, input='"go"'),
    h.ExecutionRewound(timestamp=T0, event_id=6, reason="retry it"),
    h.TaskScheduled(timestamp=T0, event_id=7, name="act", input="[1, 2]", version="3"),
    h.TaskCompleted(timestamp=T0, event_id=8, task_scheduled_id=7, result="3"),
    h.TaskFailed(timestamp=T0, event_id=9, task_scheduled_id=7, failure=FAILURE),
    h.SubOrchestrationInstanceCreated(
        timestamp=T0, event_id=10, instance_id="child", name="sub", input="null", version="4"
    ),
    h.SubOrchestrationInstanceCompleted(timestamp=T0, event_id=11, task_scheduled_id=10, result='"ok"'),
    h.SubOrchestrationInstanceFailed(timestamp=T0, event_id=12, task_scheduled_id=10, failure=FAILURE),
    h.TimerCreated(timestamp=T0, event_id=13, fire_at=T1),
    h.TimerFired(timestamp=T0, event_id=14, fire_at=T1, timer_id=13),
    h.OrchestratorStarted(timestamp=T0, event_id=15),
    h.OrchestratorCompleted(timestamp=T0, event_id=16),
    h.EventSent(timestamp=T0, event_id=17, instance_id="other", name="ping", input='{"x": true}'),
    h.EventRaised(timestamp=T0, event_id=18, name="approval", input="true"),
    h.ContinueAsNew(timestamp=T0, event_id=19, input='"again"'),
    h.EntityOperationSignaled(
        timestamp=T0,
        event_id=20,
        request_id="r1",
        operation="add",
        scheduled_time=T1,
        input="5",
        target_instance_id="@counter@a",
    ),
    h.EntityOperationCalled(
        timestamp=T0,
        event_id=21,
        request_id="r2",
        operation="get",
        scheduled_time=T1,
        input="null",
        parent_instance_id="orch-1",
        parent_execution_id="exec-1",
        target_instance_id="@counter@a",
    ),
    h.EntityOperationCompleted(timestamp=T0, event_id=22, request_id="r2", output="5"),
    h.EntityOperationFailed(timestamp=T0, event_id=23, request_id="r2", failure=FAILURE),
    h.EntityLockRequested(
        timestamp=T0,
        event_id=24,
        critical_section_id="cs",
        lock_set=["@a@1", "@b@2"],
        position=1,
        parent_instance_id="orch-1",
    ),
    h.EntityLockGranted(timestamp=T0, event_id=25, critical_section_id="cs"),
    h.EntityUnlockSent(
        timestamp=T0,
        event_id=26,
        critical_section_id="cs",
        parent_instance_id="orch-1",
        target_instance_id="@a@1",
    ),
]

# Every kind with only its required fields.
MINIMAL_EVENTS: list[h.HistoryEvent] = [
    h.ExecutionStarted(timestamp=T0, name="orch", instance_id="inst", execution_id="exec-1"),
    h.ExecutionCompleted(timestamp=T0, status=RUNNING),
    h.ExecutionTerminated(timestamp=T0),
    h.ExecutionSuspended(timestamp=T0),
    h.ExecutionResumed(timestamp=T0),
    h.ExecutionRewound(timestamp=T0),
    h.TaskScheduled(timestamp=T0, name="act"),
    h.TaskCompleted(timestamp=T0, task_scheduled_id=0),
    h.TaskFailed(
        timestamp=T0, task_scheduled_id=0, failure=TaskFailureDetails(error_type="", error_message="")
    ),
    h.SubOrchestrationInstanceCreated(timestamp=T0, instance_id="child", name="sub"),
    h.SubOrchestrationInstanceCompleted(timestamp=T0, task_scheduled_id=0),
    h.SubOrchestrationInstanceFailed(
        timestamp=T0, task_scheduled_id=0, failure=TaskFailureDetails(error_type="E", error_message="m")
    ),
    h.TimerCreated(timestamp=T0, fire_at=T0),
    h.TimerFired(timestamp=T0, fire_at=T0, timer_id=0),
    h.OrchestratorStarted(timestamp=T0),
    h.OrchestratorCompleted(timestamp=T0),
    h.EventSent(timestamp=T0, instance_id="other", name="ping"),
    h.EventRaised(timestamp=T0, name="approval"),
    h.ContinueAsNew(timestamp=T0),
    h.EntityOperationSignaled(timestamp=T0, request_id="", operation=""),
    h.EntityOperationCalled(timestamp=T0, request_id="", operation=""),
    h.EntityOperationCompleted(timestamp=T0, request_id=""),
    h.EntityOperationFailed(
        timestamp=T0, request_id="", failure=TaskFailureDetails(error_type="", error_message="")
    ),
    h.EntityLockRequested(timestamp=T0, critical_section_id=""),
    h.EntityLockGranted(timestamp=T0, critical_section_id=""),
    h.EntityUnlockSent(timestamp=T0, critical_section_id=""),
]

FULL_ACTIONS: list[h.OrchestratorAction] = [
    h.ScheduleTask(id=1, name="act", input="[1]", version="2"),
    h.CreateSubOrchestration(id=2, instance_id="child", name="sub", input='"in"', version="3"),
    h.CreateTimer(id=3, fire_at=T1),
    h.SendEvent(id=4, instance_id="other", name="ping", data='{"k": 1}'),
    h.CompleteOrchestration(
        id=5,
        status=OrchestrationRuntimeStatus.CONTINUED_AS_NEW,
        result='"next input"',
        failure=FAILURE,
        new_version="9",
        carryover_events=[
            h.EventRaised(timestamp=T0, event_id=3, name="early", input="1"),
            h.EventRaised(timestamp=T1, name="later"),
        ],
    ),
    h.TerminateOrchestration(id=6, instance_id="child", reason="enough", recurse=False),
    # The wire has no time for an entity message: it reads back as the epoch.
    h.SendEntityMessage(
        id=7,
        message=h.EntityOperationCalled(
            timestamp=datetime(1970, 1, 1, tzinfo=UTC),
            request_id="r",
            operation="add",
            input="1",
            parent_instance_id="orch-1",
            target_instance_id="@counter@a",
        ),
    ),
]

MINIMAL_ACTIONS: list[h.OrchestratorAction] = [
    h.ScheduleTask(id=0, name="act"),
    h.CreateSubOrchestration(id=0, instance_id="child", name="sub"),
    h.CreateTimer(id=0, fire_at=T0),
    h.SendEvent(id=0, instance_id="other", name="ping"),
    h.CompleteOrchestration(id=0, status=COMPLETED),
    h.TerminateOrchestration(id=0, instance_id="child"),
    h.SendEntityMessage(
        id=0,
        message=h.EntityUnlockSent(timestamp=datetime(1970, 1, 1, tzinfo=UTC), critical_section_id=""),
    ),
]


def _label(value: Any) -> str:
    return type(value).__name__


def _non_default_fields(struct: msgspec.Struct) -> set[str]:
    info = msgspec.inspect.type_info(type(struct))
    assert isinstance(info, msgspec.inspect.StructType)
    unset = set()
    for field in info.fields:
        value = getattr(struct, field.name)
        default = field.default_factory() if field.default_factory is not msgspec.NODEFAULT else field.default
        if value == default:
            unset.add(field.name)
    return unset


def test_samples_cover_every_kind_of_our_model() -> None:
    for samples, union in (
        (FULL_EVENTS, h.HistoryEvent),
        (MINIMAL_EVENTS, h.HistoryEvent),
        (FULL_ACTIONS, h.OrchestratorAction),
        (MINIMAL_ACTIONS, h.OrchestratorAction),
    ):
        assert sorted(map(_label, samples)) == sorted(cls.__name__ for cls in typing.get_args(union))


def test_samples_leave_no_field_at_default() -> None:
    # So that a field the tables forget to map cannot survive a round trip by luck.
    for sample in [*FULL_EVENTS, *FULL_ACTIONS]:
        assert _non_default_fields(sample) == set(), _label(sample)


@pytest.mark.parametrize("event", FULL_EVENTS + MINIMAL_EVENTS, ids=_label)
def test_event_round_trip(event: h.HistoryEvent) -> None:
    message = convert.event_to_pb(event)
    assert convert.event_from_pb(message) == event
    over_the_wire = pb.HistoryEvent.FromString(message.SerializeToString())
    assert convert.event_from_pb(over_the_wire) == event


@pytest.mark.parametrize("action", FULL_ACTIONS + MINIMAL_ACTIONS, ids=_label)
def test_action_round_trip(action: h.OrchestratorAction) -> None:
    message = convert.action_to_pb(action)
    assert convert.action_from_pb(message) == action
    over_the_wire = pb.OrchestratorAction.FromString(message.SerializeToString())
    assert convert.action_from_pb(over_the_wire) == action


def test_events_are_readable_by_the_official_module() -> None:
    started = FULL_EVENTS[0]
    theirs = official.HistoryEvent.FromString(convert.event_to_pb(started).SerializeToString())
    assert theirs.WhichOneof("eventType") == "executionStarted"
    body = theirs.executionStarted
    assert (body.name, body.orchestrationInstance.instanceId) == ("orch", "inst")
    assert body.orchestrationInstance.executionId.value == "exec-1"
    assert body.parentInstance.orchestrationInstance.instanceId == "parent"
    assert body.parentInstance.taskScheduledId == 4
    assert body.scheduledStartTimestamp.ToDatetime(tzinfo=UTC) == T1
    assert dict(body.tags) == {"team": "blue", "tier": "gold"}
    assert theirs.eventId == 1 and theirs.timestamp.ToDatetime(tzinfo=UTC) == T0


def test_empty_payload_text_is_present_and_none_is_absent() -> None:
    with_empty = convert.event_to_pb(h.EventRaised(timestamp=T0, name="e", input=""))
    without = convert.event_to_pb(h.EventRaised(timestamp=T0, name="e"))
    assert with_empty.eventRaised.HasField("input")
    assert not without.eventRaised.HasField("input")
    assert convert.event_from_pb(with_empty).input == ""  # type: ignore[union-attr]
    assert convert.event_from_pb(without).input is None  # type: ignore[union-attr]


def test_empty_tags_read_back_as_none() -> None:
    event = h.ExecutionStarted(timestamp=T0, name="o", instance_id="i", execution_id="x", tags={})
    assert convert.event_from_pb(convert.event_to_pb(event)).tags is None  # type: ignore[union-attr]


def test_parent_with_only_defaults_is_still_present() -> None:
    parent = h.ParentInstance(instance_id="", name="", task_scheduled_id=0)
    event = h.ExecutionStarted(timestamp=T0, name="o", instance_id="i", execution_id="x", parent=parent)
    message = convert.event_to_pb(event)
    assert message.executionStarted.HasField("parentInstance")
    assert convert.event_from_pb(message) == event


# --- official SDK messages decode -------------------------------------------------------------


def _ours(official_message: Any) -> Any:
    return getattr(pb, type(official_message).DESCRIPTOR.name).FromString(
        official_message.SerializeToString()
    )


def test_official_helper_events_decode() -> None:
    def decoded(official_event: Any) -> h.HistoryEvent:
        return convert.event_from_pb(_ours(official_event))

    started = decoded(
        helpers.new_execution_started_event("orch", "inst", '"in"', tags={"k": "v"}, version="1")
    )
    assert started == h.ExecutionStarted(
        timestamp=datetime(1970, 1, 1, tzinfo=UTC),  # the helper leaves the timestamp unset
        name="orch",
        instance_id="inst",
        execution_id="",  # and the execution id absent
        input='"in"',
        version="1",
        tags={"k": "v"},
    )
    assert decoded(helpers.new_orchestrator_started_event(T0)) == h.OrchestratorStarted(timestamp=T0)
    assert decoded(helpers.new_task_scheduled_event(3, "act", "[1]")) == h.TaskScheduled(
        timestamp=datetime(1970, 1, 1, tzinfo=UTC), event_id=3, name="act", input="[1]"
    )
    completed = decoded(helpers.new_task_completed_event(3, "42"))
    assert isinstance(completed, h.TaskCompleted)
    assert (completed.task_scheduled_id, completed.result) == (3, "42")
    timer = decoded(helpers.new_timer_fired_event(5, T1))
    assert isinstance(timer, h.TimerFired) and (timer.timer_id, timer.fire_at) == (5, T1)
    assert decoded(helpers.new_timer_created_event(5, T1)).fire_at == T1  # type: ignore[union-attr]
    raised = decoded(helpers.new_event_raised_event("approval", "true"))
    assert isinstance(raised, h.EventRaised) and (raised.name, raised.input) == ("approval", "true")
    assert decoded(helpers.new_suspend_event(encoded_input='"why"')).input == '"why"'  # type: ignore[union-attr]
    assert isinstance(decoded(helpers.new_resume_event()), h.ExecutionResumed)
    assert decoded(helpers.new_terminated_event(encoded_output='"out"')).input == '"out"'  # type: ignore[union-attr]
    sent = decoded(helpers.new_event_sent_event(7, "other", '"x"', name="ping"))
    assert sent == h.EventSent(
        timestamp=datetime(1970, 1, 1, tzinfo=UTC), event_id=7, instance_id="other", name="ping", input='"x"'
    )
    sub = decoded(helpers.new_sub_orchestration_created_event(8, "sub", "child", "1", version="2"))
    assert isinstance(sub, h.SubOrchestrationInstanceCreated)
    assert (sub.instance_id, sub.name, sub.input, sub.version) == ("child", "sub", "1", "2")
    done = decoded(helpers.new_execution_completed_event(official.ORCHESTRATION_STATUS_COMPLETED, '"r"'))
    assert isinstance(done, h.ExecutionCompleted) and (done.status, done.result) == (COMPLETED, '"r"')


def test_official_failure_details_decode_with_inner_failure() -> None:
    try:
        try:
            raise KeyError("k")
        except KeyError as inner:
            raise ValueError("outer") from inner
    except ValueError as error:
        failed = convert.event_from_pb(_ours(helpers.new_task_failed_event(4, error)))
    assert isinstance(failed, h.TaskFailed) and failed.task_scheduled_id == 4
    assert failed.failure.error_type.endswith("ValueError")
    assert failed.failure.error_message == "outer"
    assert failed.failure.stack_trace  # the SDK sends one
    sub_failed = convert.event_from_pb(
        _ours(helpers.new_sub_orchestration_failed_event(4, RuntimeError("x")))
    )
    assert isinstance(sub_failed, h.SubOrchestrationInstanceFailed)
    assert sub_failed.failure.error_message == "x"


def test_official_helper_actions_decode() -> None:
    def decoded(official_action: Any) -> h.OrchestratorAction:
        return convert.action_from_pb(_ours(official_action))

    assert decoded(
        helpers.new_schedule_task_action(1, "act", "[1]", tags={"ignored": "yes"})
    ) == h.ScheduleTask(id=1, name="act", input="[1]")
    assert decoded(helpers.new_create_timer_action(2, T1)) == h.CreateTimer(id=2, fire_at=T1)
    assert decoded(helpers.new_send_event_action(3, "other", "ping", '"d"')) == h.SendEvent(
        id=3, instance_id="other", name="ping", data='"d"'
    )
    assert decoded(helpers.new_create_sub_orchestration_action(4, "sub", "child", "1", "2")) == (
        h.CreateSubOrchestration(id=4, instance_id="child", name="sub", input="1", version="2")
    )
    carryover = helpers.new_event_raised_event("early", "5")
    carryover.timestamp.FromDatetime(T0)
    complete = decoded(
        helpers.new_complete_orchestration_action(
            5,
            official.ORCHESTRATION_STATUS_CONTINUED_AS_NEW,
            '"again"',
            carryover_events=[carryover],
            new_version="2",
        )
    )
    assert complete == h.CompleteOrchestration(
        id=5,
        status=OrchestrationRuntimeStatus.CONTINUED_AS_NEW,
        result='"again"',
        new_version="2",
        carryover_events=[h.EventRaised(timestamp=T0, name="early", input="5")],
    )
    terminate = official.OrchestratorAction(
        id=6,
        terminateOrchestration=official.TerminateOrchestrationAction(instanceId="child", recurse=True),
    )
    assert decoded(terminate) == h.TerminateOrchestration(id=6, instance_id="child", recurse=True)


# --- what our model cannot represent ----------------------------------------------------------


@pytest.mark.parametrize(
    "oneof_field",
    [
        "genericEvent",
        "historyState",
    ],
)
def test_protocol_events_without_counterpart_are_refused(oneof_field: str) -> None:
    message = pb.HistoryEvent(eventId=1)
    getattr(message, oneof_field).SetInParent()
    with pytest.raises(convert.UnsupportedMessageError, match=oneof_field):
        convert.event_from_pb(message)


def test_event_without_type_is_refused_as_a_value_error() -> None:
    with pytest.raises(ValueError, match="eventType"):
        convert.event_from_pb(pb.HistoryEvent(eventId=1))


@pytest.mark.parametrize("oneof_field", ["sendEntityMessage", "rewindOrchestration"])  # entity: empty
def test_protocol_actions_without_counterpart_are_refused(oneof_field: str) -> None:
    message = pb.OrchestratorAction(id=1)
    getattr(message, oneof_field).SetInParent()
    with pytest.raises(convert.UnsupportedMessageError, match=oneof_field):
        convert.action_from_pb(message)
    with pytest.raises(convert.UnsupportedMessageError, match="orchestratorActionType"):
        convert.action_from_pb(pb.OrchestratorAction(id=1))


def test_fields_our_model_lacks_are_dropped_not_fatal() -> None:
    message = pb.HistoryEvent(eventId=2)
    message.taskScheduled.name = "act"
    message.taskScheduled.tags["k"] = "v"
    message.taskScheduled.parentTraceContext.traceParent = "00-abc-def-01"
    assert convert.event_from_pb(message) == h.TaskScheduled(
        timestamp=datetime(1970, 1, 1, tzinfo=UTC), event_id=2, name="act"
    )


def test_non_model_objects_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="str"):
        convert.event_to_pb("not an event")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TimerFired"):
        convert.action_to_pb(FULL_EVENTS[13])  # type: ignore[arg-type]


# --- statuses, failures, timestamps, payloads, metadata ---------------------------------------


@pytest.mark.parametrize("status", list(OrchestrationRuntimeStatus), ids=lambda s: s.name)
def test_status_both_ways_matches_the_official_enum(status: OrchestrationRuntimeStatus) -> None:
    value = convert.status_to_pb(status)
    assert official.OrchestrationStatus.Name(value) == f"ORCHESTRATION_STATUS_{status.name}"
    assert convert.status_from_pb(value) is status


def test_unknown_status_value_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="99"):
        convert.status_from_pb(99)


def test_failure_details_round_trip_and_absent_failure_reads_empty() -> None:
    assert convert.failure_from_pb(convert.failure_to_pb(FAILURE)) == FAILURE
    message = pb.HistoryEvent()
    message.taskFailed.taskScheduledId = 1  # a malformed peer: no failureDetails at all
    failed = convert.event_from_pb(message)
    assert isinstance(failed, h.TaskFailed)
    assert failed.failure == TaskFailureDetails(error_type="", error_message="")


def test_timestamps_are_aware_utc_and_keep_microseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2024, 1, 1, 12, 0, 0, 999999, tzinfo=plus_two)
    decoded = convert.timestamp_from_pb(convert.timestamp_to_pb(local))
    assert decoded == local and decoded.tzinfo is UTC and decoded.hour == 10 and decoded.microsecond == 999999
    naive = datetime(2024, 1, 1, 12, 0, 0)
    assert convert.timestamp_from_pb(convert.timestamp_to_pb(naive)) == naive.replace(tzinfo=UTC)


def test_payload_helpers() -> None:
    assert convert.payload_to_pb(None) is None
    holder = pb.EventRaisedEvent(input=convert.payload_to_pb('{"a": 1}'))
    assert convert.payload_from_pb(holder, "input") == '{"a": 1}'
    assert convert.payload_from_pb(pb.EventRaisedEvent(), "input") is None


def test_metadata_round_trip() -> None:
    metadata = OrchestrationMetadata(
        instance_id="inst",
        name="orch",
        runtime_status=OrchestrationRuntimeStatus.FAILED,
        created_at=T0,
        last_updated_at=T1,
        serialized_input="1",
        serialized_output="2",
        serialized_custom_status='"busy"',
        failure_details=FAILURE,
        parent_instance_id="parent",
    )
    message = convert.metadata_to_pb(metadata)
    assert convert.metadata_from_pb(message) == metadata
    theirs = official.OrchestrationState.FromString(message.SerializeToString())
    assert theirs.orchestrationStatus == official.ORCHESTRATION_STATUS_FAILED
    assert theirs.customStatus.value == '"busy"' and theirs.parentInstanceId.value == "parent"
    bare = OrchestrationMetadata(
        instance_id="i", name="o", runtime_status=RUNNING, created_at=T0, last_updated_at=T0
    )
    assert convert.metadata_from_pb(convert.metadata_to_pb(bare)) == bare
