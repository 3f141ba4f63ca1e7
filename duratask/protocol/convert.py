"""The one place that maps duratask's event model to the protocol's messages, and back.

Each event and action kind is one row of a table: our struct class, the name of its field in the
protocol's ``oneof``, and its fields as (our attribute, protocol field path, codec). One generic
encoder and one generic decoder walk the rows, so both directions come from the same facts.

Conventions on the wire side:
- payloads (our JSON text or ``None``) are ``google.protobuf.StringValue``, absent for ``None``;
- timestamps are ``google.protobuf.Timestamp``; we read them as aware UTC datetimes and write
  naive datetimes as if they were UTC;
- empty ``tags`` maps read back as ``None`` (protobuf cannot tell an empty map from none).

What our model does not carry is dropped on decoding: trace contexts, span ids, ``tags`` of
tasks and sub-orchestrations, failure ``properties``, ``CompleteOrchestrationAction.details``
and ``tags``, ``ExecutionRewoundEvent``'s fields other than ``reason``, request times of entity
messages, and the ids of entity operation actions. Protocol events and actions that have no
counterpart at all (generic and history-state events, rewind actions) raise
``UnsupportedMessageError``; the caller decides what to do.

Entity events and actions map like the others. Orchestration work items are the exception: the
worker-side ``orchestration_work_item_from_pb`` refuses histories with entity events, since
duratask's own orchestration engine does not run entities (only ``duratask serve`` serves them,
to the official SDKs).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from ..backend.api import ActivityWorkItem, OrchestrationResult, OrchestrationWorkItem
from ..backend.entities import (
    CleanEntityStorageResult,
    EntityAction,
    EntityBatchOutcome,
    EntityMetadata,
    EntityQuery,
    EntityQueryResult,
    EntityWorkItem,
    OperationFailed,
    OperationResult,
    OperationSucceeded,
    SignalEntityAction,
    StartOrchestrationAction,
)
from ..history import (
    CompleteOrchestration,
    ContinueAsNew,
    CreateSubOrchestration,
    CreateTimer,
    EntityLockGranted,
    EntityLockRequested,
    EntityMessage,
    EntityOperationCalled,
    EntityOperationCompleted,
    EntityOperationFailed,
    EntityOperationSignaled,
    EntityUnlockSent,
    EventRaised,
    EventSent,
    ExecutionCompleted,
    ExecutionResumed,
    ExecutionRewound,
    ExecutionStarted,
    ExecutionSuspended,
    ExecutionTerminated,
    HistoryEvent,
    OrchestratorAction,
    OrchestratorCompleted,
    OrchestratorStarted,
    ParentInstance,
    ScheduleTask,
    SendEntityMessage,
    SendEvent,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TerminateOrchestration,
    TimerCreated,
    TimerFired,
)
from ..models import (
    OrchestrationMetadata,
    OrchestrationQuery,
    OrchestrationQueryResult,
    OrchestrationRuntimeStatus,
    PurgeInstancesFilter,
    TaskFailureDetails,
)
from . import StringValue, Timestamp, pb

__all__ = [
    "SignalRequest",
    "StartRequest",
    "UnsupportedMessageError",
    "action_from_pb",
    "action_to_pb",
    "activity_outcome_from_pb",
    "activity_outcome_to_pb",
    "activity_work_item_from_pb",
    "activity_work_item_to_pb",
    "check_supported",
    "clean_entity_storage_result_to_pb",
    "entity_batch_result_from_pb",
    "entity_batch_result_to_pb",
    "entity_metadata_from_pb",
    "entity_metadata_to_pb",
    "entity_query_from_pb",
    "entity_query_result_to_pb",
    "entity_response_to_pb",
    "entity_work_item_to_pb",
    "event_from_pb",
    "event_to_pb",
    "failure_from_pb",
    "failure_to_pb",
    "history_from_pb",
    "instance_response_from_pb",
    "instance_response_to_pb",
    "metadata_from_pb",
    "metadata_to_pb",
    "orchestration_result_from_pb",
    "orchestration_result_to_pb",
    "orchestration_work_item_from_pb",
    "orchestration_work_item_to_pb",
    "payload_from_pb",
    "payload_to_pb",
    "purge_filter_from_pb",
    "purge_filter_to_pb",
    "query_from_pb",
    "query_result_from_pb",
    "query_result_to_pb",
    "query_to_pb",
    "signal_request_from_pb",
    "signal_request_to_pb",
    "start_request_from_pb",
    "start_request_to_pb",
    "status_from_pb",
    "status_to_pb",
    "timestamp_from_pb",
    "timestamp_to_pb",
]


class UnsupportedMessageError(ValueError):
    """A protocol event or action that duratask's model has no counterpart for."""


# --- scalars ---------------------------------------------------------------------------------


def payload_to_pb(text: str | None) -> Any:
    """Our payload text as a ``StringValue``, or ``None`` (leave the field absent)."""
    return None if text is None else StringValue(value=text)


def payload_from_pb(message: Any, field: str) -> str | None:
    """The text of ``message.<field>`` (a ``StringValue``), ``None`` when the field is absent."""
    return str(getattr(message, field).value) if message.HasField(field) else None


def timestamp_to_pb(moment: datetime) -> Any:
    """A ``Timestamp`` for ``moment``; a naive datetime is taken as UTC."""
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def timestamp_from_pb(stamp: Any) -> datetime:
    """An aware UTC datetime (microsecond precision) for a ``Timestamp``."""
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment


# Built by name, so a renamed member on either side fails at import rather than on the wire.
_STATUS_TO_PB: dict[OrchestrationRuntimeStatus, int] = {
    status: pb.OrchestrationStatus.Value(f"ORCHESTRATION_STATUS_{status.name}")
    for status in OrchestrationRuntimeStatus
}
_STATUS_FROM_PB = {value: status for status, value in _STATUS_TO_PB.items()}


def status_to_pb(status: OrchestrationRuntimeStatus) -> int:
    """The protocol's ``OrchestrationStatus`` value of ``status``."""
    return _STATUS_TO_PB[status]


def status_from_pb(value: int) -> OrchestrationRuntimeStatus:
    """Our status for a protocol ``OrchestrationStatus`` value; ``ValueError`` if unknown."""
    try:
        return _STATUS_FROM_PB[value]
    except KeyError:
        raise ValueError(f"unknown protocol orchestration status {value!r}") from None


# --- field codecs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Codec:
    """How one field moves: ``put(parent_message, field_name, our_value)`` and its inverse ``get``."""

    put: Callable[[Any, str, Any], None]
    get: Callable[[Any, str], Any]


def _put_scalar(message: Any, field: str, value: Any) -> None:
    setattr(message, field, value)


def _put_wrapped(message: Any, field: str, value: Any) -> None:
    getattr(message, field).value = value


def _put_optional_wrapped(message: Any, field: str, value: Any) -> None:
    if value is not None:
        getattr(message, field).value = value


def _put_time(message: Any, field: str, value: Any) -> None:
    getattr(message, field).FromDatetime(value)


def _put_optional_time(message: Any, field: str, value: Any) -> None:
    if value is not None:
        getattr(message, field).FromDatetime(value)


def _get_optional_time(message: Any, field: str) -> datetime | None:
    return timestamp_from_pb(getattr(message, field)) if message.HasField(field) else None


def _put_failure(message: Any, field: str, value: Any) -> None:
    if value is not None:
        getattr(message, field).CopyFrom(failure_to_pb(value))


def _get_optional_failure(message: Any, field: str) -> TaskFailureDetails | None:
    return failure_from_pb(getattr(message, field)) if message.HasField(field) else None


def _put_tags(message: Any, field: str, value: Any) -> None:
    if value:
        getattr(message, field).update(value)


def _put_events(message: Any, field: str, value: Any) -> None:
    getattr(message, field).extend(event_to_pb(event) for event in value)


_SCALAR = _Codec(_put_scalar, getattr)  # str, int and bool map one to one
_WRAPPED_TEXT = _Codec(_put_wrapped, lambda m, f: getattr(m, f).value)  # our str, their StringValue
_PAYLOAD = _Codec(_put_optional_wrapped, payload_from_pb)
_TIME = _Codec(_put_time, lambda m, f: timestamp_from_pb(getattr(m, f)))
_OPTIONAL_TIME = _Codec(_put_optional_time, _get_optional_time)
_STATUS = _Codec(lambda m, f, v: setattr(m, f, status_to_pb(v)), lambda m, f: status_from_pb(getattr(m, f)))
_FAILURE = _Codec(_put_failure, lambda m, f: failure_from_pb(getattr(m, f)))  # absent reads as empty
_OPTIONAL_FAILURE = _Codec(_put_failure, _get_optional_failure)
_TAGS = _Codec(_put_tags, lambda m, f: dict(getattr(m, f)) or None)
_EVENTS = _Codec(_put_events, lambda m, f: [event_from_pb(e) for e in getattr(m, f)])


def _put_statuses(message: Any, field: str, value: Any) -> None:
    if value:
        getattr(message, field).extend(status_to_pb(status) for status in value)


def _put_texts(message: Any, field: str, value: Any) -> None:
    for text in value or ():
        getattr(message, field).add(value=text)


def _put_text_list(message: Any, field: str, value: Any) -> None:
    getattr(message, field).extend(value)


_TEXT_LIST = _Codec(_put_text_list, lambda m, f: list(getattr(m, f)))  # repeated string, our list[str]


# Lists that are ``None`` on our side when empty (a filter that is not set).
_STATUSES = _Codec(_put_statuses, lambda m, f: [status_from_pb(v) for v in getattr(m, f)] or None)
_WRAPPED_TEXTS = _Codec(_put_texts, lambda m, f: [s.value for s in getattr(m, f)] or None)


@dataclass(frozen=True)
class _Field:
    ours: str
    wire: str  # dotted path inside the protocol message, e.g. "orchestrationInstance.instanceId"
    codec: _Codec
    # ``wire`` split once: the sub-messages to walk through, then the field itself.
    parents: tuple[str, ...] = dataclasses.field(init=False)
    leaf: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        *parents, leaf = self.wire.split(".")
        object.__setattr__(self, "parents", tuple(parents))
        object.__setattr__(self, "leaf", leaf)


def _encode_fields(source: Any, message: Any, fields: Sequence[_Field]) -> None:
    for spec in fields:
        spec.codec.put(_descend(message, spec.parents), spec.leaf, getattr(source, spec.ours))


def _decode_fields(message: Any, fields: Sequence[_Field]) -> dict[str, Any]:
    return {spec.ours: spec.codec.get(_descend(message, spec.parents), spec.leaf) for spec in fields}


def _descend(message: Any, parents: tuple[str, ...]) -> Any:
    for name in parents:
        message = getattr(message, name)
    return message


def _nested(model: Callable[..., Any], fields: Sequence[_Field]) -> _Codec:
    """A codec for an optional sub-message that maps to one of our structs."""

    def put(message: Any, field: str, value: Any) -> None:
        if value is not None:
            sub_message = getattr(message, field)
            sub_message.SetInParent()  # present even if every field of it is a default
            _encode_fields(value, sub_message, fields)

    def get(message: Any, field: str) -> Any:
        if not message.HasField(field):
            return None
        return model(**_decode_fields(getattr(message, field), fields))

    return _Codec(put, get)


# --- the tables ------------------------------------------------------------------------------

_FAILURE_FIELDS = (
    _Field("error_type", "errorType", _SCALAR),
    _Field("error_message", "errorMessage", _SCALAR),
    _Field("stack_trace", "stackTrace", _PAYLOAD),
    _Field("inner_failure", "innerFailure", _OPTIONAL_FAILURE),
    _Field("is_non_retriable", "isNonRetriable", _SCALAR),
)

_PARENT = _nested(
    ParentInstance,
    (
        _Field("instance_id", "orchestrationInstance.instanceId", _SCALAR),
        _Field("execution_id", "orchestrationInstance.executionId", _PAYLOAD),
        _Field("name", "name", _WRAPPED_TEXT),
        _Field("version", "version", _PAYLOAD),
        _Field("task_scheduled_id", "taskScheduledId", _SCALAR),
    ),
)

M = TypeVar("M")


@dataclass(frozen=True)
class _Kind(Generic[M]):
    model: type[M]
    wire: str  # the field of the protocol message's oneof
    fields: tuple[_Field, ...] = ()


_EVENT_KINDS: tuple[_Kind[Any], ...] = (
    _Kind(
        ExecutionStarted,
        "executionStarted",
        (
            _Field("name", "name", _SCALAR),
            _Field("instance_id", "orchestrationInstance.instanceId", _SCALAR),
            _Field("execution_id", "orchestrationInstance.executionId", _WRAPPED_TEXT),
            _Field("input", "input", _PAYLOAD),
            _Field("version", "version", _PAYLOAD),
            _Field("parent", "parentInstance", _PARENT),
            _Field("scheduled_start", "scheduledStartTimestamp", _OPTIONAL_TIME),
            _Field("tags", "tags", _TAGS),
        ),
    ),
    _Kind(
        ExecutionCompleted,
        "executionCompleted",
        (
            _Field("status", "orchestrationStatus", _STATUS),
            _Field("result", "result", _PAYLOAD),
            _Field("failure", "failureDetails", _OPTIONAL_FAILURE),
        ),
    ),
    _Kind(
        ExecutionTerminated,
        "executionTerminated",
        (_Field("input", "input", _PAYLOAD), _Field("recurse", "recurse", _SCALAR)),
    ),
    _Kind(ExecutionSuspended, "executionSuspended", (_Field("input", "input", _PAYLOAD),)),
    _Kind(ExecutionResumed, "executionResumed", (_Field("input", "input", _PAYLOAD),)),
    _Kind(ExecutionRewound, "executionRewound", (_Field("reason", "reason", _PAYLOAD),)),
    _Kind(
        TaskScheduled,
        "taskScheduled",
        (
            _Field("name", "name", _SCALAR),
            _Field("input", "input", _PAYLOAD),
            _Field("version", "version", _PAYLOAD),
        ),
    ),
    _Kind(
        TaskCompleted,
        "taskCompleted",
        (_Field("task_scheduled_id", "taskScheduledId", _SCALAR), _Field("result", "result", _PAYLOAD)),
    ),
    _Kind(
        TaskFailed,
        "taskFailed",
        (
            _Field("task_scheduled_id", "taskScheduledId", _SCALAR),
            _Field("failure", "failureDetails", _FAILURE),
        ),
    ),
    _Kind(
        SubOrchestrationInstanceCreated,
        "subOrchestrationInstanceCreated",
        (
            _Field("instance_id", "instanceId", _SCALAR),
            _Field("name", "name", _SCALAR),
            _Field("input", "input", _PAYLOAD),
            _Field("version", "version", _PAYLOAD),
        ),
    ),
    _Kind(
        SubOrchestrationInstanceCompleted,
        "subOrchestrationInstanceCompleted",
        (_Field("task_scheduled_id", "taskScheduledId", _SCALAR), _Field("result", "result", _PAYLOAD)),
    ),
    _Kind(
        SubOrchestrationInstanceFailed,
        "subOrchestrationInstanceFailed",
        (
            _Field("task_scheduled_id", "taskScheduledId", _SCALAR),
            _Field("failure", "failureDetails", _FAILURE),
        ),
    ),
    _Kind(TimerCreated, "timerCreated", (_Field("fire_at", "fireAt", _TIME),)),
    _Kind(
        TimerFired, "timerFired", (_Field("fire_at", "fireAt", _TIME), _Field("timer_id", "timerId", _SCALAR))
    ),
    _Kind(OrchestratorStarted, "orchestratorStarted"),
    _Kind(OrchestratorCompleted, "orchestratorCompleted"),
    _Kind(
        EventSent,
        "eventSent",
        (
            _Field("instance_id", "instanceId", _SCALAR),
            _Field("name", "name", _SCALAR),
            _Field("input", "input", _PAYLOAD),
        ),
    ),
    _Kind(EventRaised, "eventRaised", (_Field("name", "name", _SCALAR), _Field("input", "input", _PAYLOAD))),
    _Kind(ContinueAsNew, "continueAsNew", (_Field("input", "input", _PAYLOAD),)),
    _Kind(
        EntityOperationSignaled,
        "entityOperationSignaled",
        (
            _Field("request_id", "requestId", _SCALAR),
            _Field("operation", "operation", _SCALAR),
            _Field("scheduled_time", "scheduledTime", _OPTIONAL_TIME),
            _Field("input", "input", _PAYLOAD),
            _Field("target_instance_id", "targetInstanceId", _PAYLOAD),
        ),
    ),
    _Kind(
        EntityOperationCalled,
        "entityOperationCalled",
        (
            _Field("request_id", "requestId", _SCALAR),
            _Field("operation", "operation", _SCALAR),
            _Field("scheduled_time", "scheduledTime", _OPTIONAL_TIME),
            _Field("input", "input", _PAYLOAD),
            _Field("parent_instance_id", "parentInstanceId", _PAYLOAD),
            _Field("parent_execution_id", "parentExecutionId", _PAYLOAD),
            _Field("target_instance_id", "targetInstanceId", _PAYLOAD),
        ),
    ),
    _Kind(
        EntityOperationCompleted,
        "entityOperationCompleted",
        (_Field("request_id", "requestId", _SCALAR), _Field("output", "output", _PAYLOAD)),
    ),
    _Kind(
        EntityOperationFailed,
        "entityOperationFailed",
        (_Field("request_id", "requestId", _SCALAR), _Field("failure", "failureDetails", _FAILURE)),
    ),
    _Kind(
        EntityLockRequested,
        "entityLockRequested",
        (
            _Field("critical_section_id", "criticalSectionId", _SCALAR),
            _Field("lock_set", "lockSet", _TEXT_LIST),
            _Field("position", "position", _SCALAR),
            _Field("parent_instance_id", "parentInstanceId", _PAYLOAD),
        ),
    ),
    _Kind(
        EntityLockGranted, "entityLockGranted", (_Field("critical_section_id", "criticalSectionId", _SCALAR),)
    ),
    _Kind(
        EntityUnlockSent,
        "entityUnlockSent",
        (
            _Field("critical_section_id", "criticalSectionId", _SCALAR),
            _Field("parent_instance_id", "parentInstanceId", _PAYLOAD),
            _Field("target_instance_id", "targetInstanceId", _PAYLOAD),
        ),
    ),
)

# The protocol's SendEntityMessageAction holds one of these, under the same field names as in
# HistoryEvent. The wire has no time for them: decoded, they carry the epoch, as an event whose
# timestamp is unset does (the backend stamps the event it records).
_ENTITY_MESSAGE_MODELS = (
    EntityOperationSignaled,
    EntityOperationCalled,
    EntityLockRequested,
    EntityUnlockSent,
)
_ENTITY_MESSAGE_ONEOF = "EntityMessageType"
_UNSET_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def _put_entity_message(message: Any, field: str, value: Any) -> None:
    kind = _lookup_model(_EVENT_BY_MODEL, value)
    body = getattr(message, kind.wire)
    body.SetInParent()
    _encode_fields(value, body, kind.fields)


def _get_entity_message(message: Any, field: str) -> EntityMessage:
    wire = message.WhichOneof(field)
    kind = _EVENT_BY_WIRE.get(wire) if wire is not None else None
    if kind is None or kind.model not in _ENTITY_MESSAGE_MODELS:
        raise UnsupportedMessageError(
            f"protocol orchestrator action 'sendEntityMessage' holds no entity message we know ({wire!r})"
        )
    decoded: EntityMessage = kind.model(
        timestamp=_UNSET_TIME, **_decode_fields(getattr(message, wire), kind.fields)
    )
    return decoded


_ENTITY_MESSAGE = _Codec(_put_entity_message, _get_entity_message)

_ACTION_KINDS: tuple[_Kind[Any], ...] = (
    _Kind(
        ScheduleTask,
        "scheduleTask",
        (
            _Field("name", "name", _SCALAR),
            _Field("input", "input", _PAYLOAD),
            _Field("version", "version", _PAYLOAD),
        ),
    ),
    _Kind(
        CreateSubOrchestration,
        "createSubOrchestration",
        (
            _Field("instance_id", "instanceId", _SCALAR),
            _Field("name", "name", _SCALAR),
            _Field("input", "input", _PAYLOAD),
            _Field("version", "version", _PAYLOAD),
        ),
    ),
    _Kind(CreateTimer, "createTimer", (_Field("fire_at", "fireAt", _TIME),)),
    _Kind(
        SendEvent,
        "sendEvent",
        (
            _Field("instance_id", "instance.instanceId", _SCALAR),
            _Field("name", "name", _SCALAR),
            _Field("data", "data", _PAYLOAD),
        ),
    ),
    _Kind(
        CompleteOrchestration,
        "completeOrchestration",
        (
            _Field("status", "orchestrationStatus", _STATUS),
            _Field("result", "result", _PAYLOAD),
            _Field("failure", "failureDetails", _OPTIONAL_FAILURE),
            _Field("new_version", "newVersion", _PAYLOAD),
            _Field("carryover_events", "carryoverEvents", _EVENTS),
        ),
    ),
    _Kind(
        TerminateOrchestration,
        "terminateOrchestration",
        (
            _Field("instance_id", "instanceId", _SCALAR),
            _Field("reason", "reason", _PAYLOAD),
            _Field("recurse", "recurse", _SCALAR),
        ),
    ),
    _Kind(
        SendEntityMessage, "sendEntityMessage", (_Field("message", _ENTITY_MESSAGE_ONEOF, _ENTITY_MESSAGE),)
    ),
)

_METADATA_FIELDS = (
    _Field("instance_id", "instanceId", _SCALAR),
    _Field("name", "name", _SCALAR),
    _Field("runtime_status", "orchestrationStatus", _STATUS),
    _Field("created_at", "createdTimestamp", _TIME),
    _Field("last_updated_at", "lastUpdatedTimestamp", _TIME),
    _Field("serialized_input", "input", _PAYLOAD),
    _Field("serialized_output", "output", _PAYLOAD),
    _Field("serialized_custom_status", "customStatus", _PAYLOAD),
    _Field("failure_details", "failureDetails", _OPTIONAL_FAILURE),
    _Field("parent_instance_id", "parentInstanceId", _PAYLOAD),
)


def _by_model(kinds: tuple[_Kind[Any], ...]) -> Mapping[type[Any], _Kind[Any]]:
    return {kind.model: kind for kind in kinds}


def _by_wire(kinds: tuple[_Kind[Any], ...]) -> Mapping[str, _Kind[Any]]:
    return {kind.wire: kind for kind in kinds}


_EVENT_BY_MODEL = _by_model(_EVENT_KINDS)
_EVENT_BY_WIRE = _by_wire(_EVENT_KINDS)
_ACTION_BY_MODEL = _by_model(_ACTION_KINDS)
_ACTION_BY_WIRE = _by_wire(_ACTION_KINDS)


# --- public conversions ----------------------------------------------------------------------


def failure_to_pb(failure: TaskFailureDetails) -> pb.TaskFailureDetails:
    message = pb.TaskFailureDetails()
    _encode_fields(failure, message, _FAILURE_FIELDS)
    return message


def failure_from_pb(message: pb.TaskFailureDetails) -> TaskFailureDetails:
    return TaskFailureDetails(**_decode_fields(message, _FAILURE_FIELDS))


def event_to_pb(event: HistoryEvent) -> pb.HistoryEvent:
    kind = _lookup_model(_EVENT_BY_MODEL, event)
    message = pb.HistoryEvent(eventId=event.event_id)
    message.timestamp.FromDatetime(event.timestamp)
    body = getattr(message, kind.wire)
    body.SetInParent()  # the oneof is set even for events without fields
    _encode_fields(event, body, kind.fields)
    return message


def event_from_pb(message: pb.HistoryEvent) -> HistoryEvent:
    """Our event for a protocol ``HistoryEvent``; ``UnsupportedMessageError`` if we have none."""
    kind = _lookup_wire(_EVENT_BY_WIRE, message, "eventType", "history event")
    decoded: HistoryEvent = kind.model(
        timestamp=timestamp_from_pb(message.timestamp),
        event_id=message.eventId,
        **_decode_fields(getattr(message, kind.wire), kind.fields),
    )
    return decoded


def action_to_pb(action: OrchestratorAction) -> pb.OrchestratorAction:
    kind = _lookup_model(_ACTION_BY_MODEL, action)
    message = pb.OrchestratorAction(id=action.id)
    body = getattr(message, kind.wire)
    body.SetInParent()
    _encode_fields(action, body, kind.fields)
    return message


def action_from_pb(message: pb.OrchestratorAction) -> OrchestratorAction:
    """Our action for a protocol ``OrchestratorAction``; ``UnsupportedMessageError`` if we have none."""
    kind = _lookup_wire(_ACTION_BY_WIRE, message, "orchestratorActionType", "orchestrator action")
    decoded: OrchestratorAction = kind.model(
        id=message.id, **_decode_fields(getattr(message, kind.wire), kind.fields)
    )
    return decoded


def metadata_to_pb(metadata: OrchestrationMetadata) -> pb.OrchestrationState:
    message = pb.OrchestrationState()
    _encode_fields(metadata, message, _METADATA_FIELDS)
    return message


def metadata_from_pb(message: pb.OrchestrationState) -> OrchestrationMetadata:
    """Our metadata for an ``OrchestrationState`` (its version, execution id, tags, scheduled and
    completed timestamps have no place in ``OrchestrationMetadata`` and are dropped)."""
    return OrchestrationMetadata(**_decode_fields(message, _METADATA_FIELDS))


def _lookup_model(table: Mapping[type[Any], _Kind[Any]], value: object) -> _Kind[Any]:
    try:
        return table[type(value)]
    except KeyError:
        raise TypeError(f"no protocol mapping for {type(value).__name__}") from None


def _lookup_wire(table: Mapping[str, _Kind[Any]], message: Any, oneof: str, what: str) -> _Kind[Any]:
    wire = message.WhichOneof(oneof)
    if wire is None:
        raise UnsupportedMessageError(f"protocol {what} has no {oneof} set")
    try:
        return table[wire]
    except KeyError:
        raise UnsupportedMessageError(
            f"protocol {what} {wire!r} has no counterpart in duratask's model"
        ) from None


# --- client requests and responses -----------------------------------------------------------


@dataclass(frozen=True)
class StartRequest:
    """The arguments of ``Backend.start_orchestration``, as a ``CreateInstanceRequest`` carries them."""

    name: str
    instance_id: str
    input: str | None = None
    start_at: datetime | None = None
    version: str | None = None
    tags: dict[str, str] | None = None


# A text that is "" on our side when the protocol leaves its StringValue out (execution ids).
_OPTIONAL_TEXT = _Codec(
    lambda m, f, v: _put_optional_wrapped(m, f, v or None), lambda m, f: str(getattr(m, f).value)
)

_START_FIELDS = (
    _Field("name", "name", _SCALAR),
    _Field("instance_id", "instanceId", _SCALAR),
    _Field("input", "input", _PAYLOAD),
    _Field("start_at", "scheduledStartTimestamp", _OPTIONAL_TIME),
    _Field("version", "version", _PAYLOAD),
    _Field("tags", "tags", _TAGS),
)

_QUERY_FIELDS = (
    _Field("runtime_status", "runtimeStatus", _STATUSES),
    _Field("created_from", "createdTimeFrom", _OPTIONAL_TIME),
    _Field("created_to", "createdTimeTo", _OPTIONAL_TIME),
    _Field("instance_id_prefix", "instanceIdPrefix", _PAYLOAD),
    _Field("task_hub_names", "taskHubNames", _WRAPPED_TEXTS),
    _Field("page_size", "maxInstanceCount", _SCALAR),
    _Field("continuation_token", "continuationToken", _PAYLOAD),
)

_PURGE_FILTER_FIELDS = (
    _Field("created_from", "createdTimeFrom", _OPTIONAL_TIME),
    _Field("created_to", "createdTimeTo", _OPTIONAL_TIME),
    _Field("runtime_status", "runtimeStatus", _STATUSES),
)


def start_request_to_pb(request: StartRequest) -> pb.CreateInstanceRequest:
    message = pb.CreateInstanceRequest()
    _encode_fields(request, message, _START_FIELDS)
    return message


def start_request_from_pb(message: pb.CreateInstanceRequest) -> StartRequest:
    """Our start arguments; an empty ``instanceId`` stays empty (the protocol's "pick one for me")."""
    return StartRequest(**_decode_fields(message, _START_FIELDS))


def instance_response_to_pb(metadata: OrchestrationMetadata | None) -> pb.GetInstanceResponse:
    if metadata is None:
        return pb.GetInstanceResponse(exists=False)
    return pb.GetInstanceResponse(exists=True, orchestrationState=metadata_to_pb(metadata))


def instance_response_from_pb(message: pb.GetInstanceResponse) -> OrchestrationMetadata | None:
    """The instance's metadata, ``None`` when the response says it does not exist."""
    return metadata_from_pb(message.orchestrationState) if message.exists else None


def query_to_pb(query: OrchestrationQuery) -> pb.InstanceQuery:
    """Our query as an ``InstanceQuery``; results of our queries always carry inputs and outputs."""
    message = pb.InstanceQuery(fetchInputsAndOutputs=True)
    _encode_fields(query, message, _QUERY_FIELDS)
    return message


def query_from_pb(message: pb.InstanceQuery) -> OrchestrationQuery:
    """Our query for an ``InstanceQuery``: empty texts and lists are unset filters, and a
    ``maxInstanceCount`` of 0 (unset in proto3) is our default page size."""
    decoded = _decode_fields(message, _QUERY_FIELDS)
    if decoded["page_size"] == 0:
        del decoded["page_size"]
    for optional_text in ("instance_id_prefix", "continuation_token"):
        decoded[optional_text] = decoded[optional_text] or None
    return OrchestrationQuery(**decoded)


def query_result_to_pb(result: OrchestrationQueryResult) -> pb.QueryInstancesResponse:
    message = pb.QueryInstancesResponse(orchestrationState=[metadata_to_pb(m) for m in result.instances])
    _put_optional_wrapped(message, "continuationToken", result.continuation_token)
    return message


def query_result_from_pb(message: pb.QueryInstancesResponse) -> OrchestrationQueryResult:
    """One page; an empty continuation token, like an absent one, means the last page."""
    return OrchestrationQueryResult(
        instances=[metadata_from_pb(state) for state in message.orchestrationState],
        continuation_token=payload_from_pb(message, "continuationToken") or None,
    )


def purge_filter_to_pb(filter: PurgeInstancesFilter) -> pb.PurgeInstanceFilter:
    message = pb.PurgeInstanceFilter()
    _encode_fields(filter, message, _PURGE_FILTER_FIELDS)
    return message


def purge_filter_from_pb(message: pb.PurgeInstanceFilter) -> PurgeInstancesFilter:
    """Our filter (the protocol's ``timeout`` has no counterpart and is dropped)."""
    return PurgeInstancesFilter(**_decode_fields(message, _PURGE_FILTER_FIELDS))


# --- work items and their results ------------------------------------------------------------


def _put_actions(message: Any, field: str, value: Any) -> None:
    getattr(message, field).extend(action_to_pb(action) for action in value)


_ACTIONS = _Codec(_put_actions, lambda m, f: [action_from_pb(a) for a in getattr(m, f)])

_ORCHESTRATOR_REQUEST_FIELDS = (
    _Field("instance_id", "instanceId", _SCALAR),
    _Field("execution_id", "executionId", _OPTIONAL_TEXT),
    _Field("new_events", "newEvents", _EVENTS),
)

_ACTIVITY_REQUEST_FIELDS = (
    _Field("name", "name", _SCALAR),
    _Field("input", "input", _PAYLOAD),
    _Field("instance_id", "orchestrationInstance.instanceId", _SCALAR),
    _Field("execution_id", "orchestrationInstance.executionId", _OPTIONAL_TEXT),
    _Field("task_id", "taskId", _SCALAR),
    _Field("version", "version", _PAYLOAD),
)

_ORCHESTRATION_RESULT_FIELDS = (
    _Field("actions", "actions", _ACTIONS),
    _Field("custom_status", "customStatus", _PAYLOAD),
)


def orchestration_work_item_to_pb(item: OrchestrationWorkItem) -> pb.WorkItem:
    """A ``WorkItem`` with an ``OrchestratorRequest``. An item without ``history`` is sent with
    ``requiresHistoryStreaming`` (only for workers that declared that capability). The item's name
    and history length are not on the wire: a worker reads them from the events."""
    message = pb.WorkItem(completionToken=item.token)
    request = message.orchestratorRequest
    request.SetInParent()
    _encode_fields(item, request, _ORCHESTRATOR_REQUEST_FIELDS)
    if item.history is None:
        request.requiresHistoryStreaming = True
    else:
        request.pastEvents.extend(event_to_pb(event) for event in item.history)
    return message


def orchestration_work_item_from_pb(
    message: pb.WorkItem, past_events: Sequence[pb.HistoryEvent] | None = None, *, with_history: bool = True
) -> OrchestrationWorkItem:
    """Our work item for a ``WorkItem`` with an ``OrchestratorRequest``.

    ``past_events`` is the history when the request came without it (``requiresHistoryStreaming``:
    the caller fetched it with ``StreamInstanceHistory``). With ``with_history=False`` the item's
    ``history`` is left ``None`` (its length is set): converting a long history costs far more than
    a worker whose cache is warm needs, and ``history_from_pb`` converts it on a cache miss.
    The orchestrator's name, and the execution id when the request has none, come from the
    ``ExecutionStarted`` event. Raises ``UnsupportedMessageError`` for events duratask has no
    counterpart for (checked either way), and for entity events: duratask's orchestration engine
    does not run orchestrations that use entities.
    """
    request = message.orchestratorRequest
    if past_events is None:
        if request.requiresHistoryStreaming:
            raise ValueError("the request asks the worker to stream the history: pass past_events")
        past_events = request.pastEvents
    _refuse_entity_events(itertools.chain(past_events, request.newEvents))
    fields = _decode_fields(request, _ORCHESTRATOR_REQUEST_FIELDS)
    if with_history:
        history: list[HistoryEvent] | None = history_from_pb(past_events)
        candidates: Iterable[HistoryEvent] = itertools.chain(history or (), fields["new_events"])
    else:
        check_supported(past_events)
        history = None
        first_started = next(
            (e for e in past_events if e.WhichOneof("eventType") == "executionStarted"), None
        )
        candidates = itertools.chain(
            () if first_started is None else (event_from_pb(first_started),), fields["new_events"]
        )
    started = next((e for e in candidates if isinstance(e, ExecutionStarted)), None)
    if started is not None and not fields["execution_id"]:
        fields["execution_id"] = started.execution_id
    return OrchestrationWorkItem(
        **fields,
        name=started.name if started is not None else "",
        token=message.completionToken,
        history_length=len(past_events),
        history=history,
    )


_ENTITY_EVENT_WIRES = frozenset(
    _EVENT_BY_MODEL[model].wire
    for model in (
        EntityOperationSignaled,
        EntityOperationCalled,
        EntityOperationCompleted,
        EntityOperationFailed,
        EntityLockRequested,
        EntityLockGranted,
        EntityUnlockSent,
    )
)


def _refuse_entity_events(messages: Iterable[pb.HistoryEvent]) -> None:
    for message in messages:
        wire = message.WhichOneof("eventType")
        if wire in _ENTITY_EVENT_WIRES:
            raise UnsupportedMessageError(
                f"history event {wire!r} belongs to a durable entity exchange, and duratask's "
                "orchestration engine does not run orchestrations that use entities"
            )


def history_from_pb(messages: Iterable[pb.HistoryEvent]) -> list[HistoryEvent]:
    """Our events for protocol events; ``UnsupportedMessageError`` at the first we cannot model."""
    return [event_from_pb(message) for message in messages]


def check_supported(messages: Iterable[pb.HistoryEvent]) -> None:
    """``UnsupportedMessageError`` if any event is of a kind duratask has no counterpart for
    (cheap: looks at the kinds only)."""
    for message in messages:
        wire = message.WhichOneof("eventType")
        if wire not in _EVENT_BY_WIRE:
            _lookup_wire(_EVENT_BY_WIRE, message, "eventType", "history event")


def activity_work_item_to_pb(item: ActivityWorkItem) -> pb.WorkItem:
    """A ``WorkItem`` with an ``ActivityRequest`` (the attempt number is not on the wire)."""
    message = pb.WorkItem(completionToken=item.token)
    request = message.activityRequest
    request.SetInParent()
    _encode_fields(item, request, _ACTIVITY_REQUEST_FIELDS)
    return message


def activity_work_item_from_pb(message: pb.WorkItem) -> ActivityWorkItem:
    return ActivityWorkItem(
        token=message.completionToken, **_decode_fields(message.activityRequest, _ACTIVITY_REQUEST_FIELDS)
    )


def orchestration_result_to_pb(
    item: OrchestrationWorkItem, result: OrchestrationResult
) -> pb.OrchestratorResponse:
    message = pb.OrchestratorResponse(instanceId=item.instance_id, completionToken=item.token)
    _encode_fields(result, message, _ORCHESTRATION_RESULT_FIELDS)
    return message


def orchestration_result_from_pb(message: pb.OrchestratorResponse) -> OrchestrationResult:
    """The episode's result (which work item it completes: ``instanceId`` and ``completionToken``)."""
    return OrchestrationResult(**_decode_fields(message, _ORCHESTRATION_RESULT_FIELDS))


def activity_outcome_to_pb(
    item: ActivityWorkItem, outcome: TaskCompleted | TaskFailed
) -> pb.ActivityResponse:
    message = pb.ActivityResponse(
        instanceId=item.instance_id, taskId=item.task_id, completionToken=item.token
    )
    if isinstance(outcome, TaskFailed):
        message.failureDetails.SetInParent()
        message.failureDetails.CopyFrom(failure_to_pb(outcome.failure))
    else:
        _put_optional_wrapped(message, "result", outcome.result)
    return message


def activity_outcome_from_pb(message: pb.ActivityResponse, timestamp: datetime) -> TaskCompleted | TaskFailed:
    """The history event an ``ActivityResponse`` becomes, stamped with ``timestamp`` (the wire has none):
    ``TaskFailed`` when it carries failure details, else ``TaskCompleted``."""
    if message.HasField("failureDetails"):
        return TaskFailed(
            timestamp=timestamp,
            task_scheduled_id=message.taskId,
            failure=failure_from_pb(message.failureDetails),
        )
    return TaskCompleted(
        timestamp=timestamp, task_scheduled_id=message.taskId, result=payload_from_pb(message, "result")
    )


# --- entities ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalRequest:
    """The arguments of ``LocalBackend.signal_entity``, as a ``SignalEntityRequest`` carries them
    (an empty ``request_id`` is "pick one")."""

    instance_id: str
    operation: str
    input: str | None = None
    request_id: str = ""
    scheduled_time: datetime | None = None


_SIGNAL_FIELDS = (
    _Field("instance_id", "instanceId", _SCALAR),
    _Field("operation", "name", _SCALAR),
    _Field("input", "input", _PAYLOAD),
    _Field("request_id", "requestId", _SCALAR),
    _Field("scheduled_time", "scheduledTime", _OPTIONAL_TIME),
)


def signal_request_to_pb(request: SignalRequest) -> pb.SignalEntityRequest:
    message = pb.SignalEntityRequest()
    _encode_fields(request, message, _SIGNAL_FIELDS)
    return message


def signal_request_from_pb(message: pb.SignalEntityRequest) -> SignalRequest:
    return SignalRequest(**_decode_fields(message, _SIGNAL_FIELDS))


_OPERATION_REQUEST_FIELDS = (
    _Field("operation", "operation", _SCALAR),
    _Field("request_id", "requestId", _SCALAR),
    _Field("input", "input", _PAYLOAD),
)


def entity_work_item_to_pb(item: EntityWorkItem, *, v2: bool = True) -> pb.WorkItem:
    """A ``WorkItem`` with the batch: an ``EntityRequest`` (``entityRequestV2``: the operations as
    history events, as the Durable Task Scheduler sends them) or, with ``v2=False``, the older
    ``EntityBatchRequest`` (``entityRequest``: operation requests without their callers)."""
    message = pb.WorkItem(completionToken=item.token)
    if v2:
        request = message.entityRequestV2
        request.SetInParent()
        request.instanceId = item.instance_id
        request.executionId = item.execution_id
        request.operationRequests.extend(event_to_pb(operation) for operation in item.operations)
    else:
        request = message.entityRequest
        request.SetInParent()
        request.instanceId = item.instance_id
        for operation in item.operations:
            _encode_fields(operation, request.operations.add(), _OPERATION_REQUEST_FIELDS)
    _put_optional_wrapped(request, "entityState", item.state)
    return message


_RESULT_KINDS: tuple[_Kind[Any], ...] = (
    _Kind(OperationSucceeded, "success", (_Field("result", "result", _PAYLOAD),)),
    _Kind(OperationFailed, "failure", (_Field("failure", "failureDetails", _FAILURE),)),
)
_ENTITY_ACTION_KINDS: tuple[_Kind[Any], ...] = (
    _Kind(
        SignalEntityAction,
        "sendSignal",
        (
            _Field("instance_id", "instanceId", _SCALAR),
            _Field("operation", "name", _SCALAR),
            _Field("input", "input", _PAYLOAD),
            _Field("scheduled_time", "scheduledTime", _OPTIONAL_TIME),
        ),
    ),
    _Kind(
        StartOrchestrationAction,
        "startNewOrchestration",
        (
            _Field("instance_id", "instanceId", _SCALAR),
            _Field("name", "name", _SCALAR),
            _Field("input", "input", _PAYLOAD),
            _Field("version", "version", _PAYLOAD),
            _Field("scheduled_time", "scheduledTime", _OPTIONAL_TIME),
        ),
    ),
)
_RESULT_BY_MODEL, _RESULT_BY_WIRE = _by_model(_RESULT_KINDS), _by_wire(_RESULT_KINDS)
_ENTITY_ACTION_BY_MODEL, _ENTITY_ACTION_BY_WIRE = (
    _by_model(_ENTITY_ACTION_KINDS),
    _by_wire(_ENTITY_ACTION_KINDS),
)


def _oneof_to_pb(table: Mapping[type[Any], _Kind[Any]], value: Any, message: Any) -> None:
    kind = _lookup_model(table, value)
    body = getattr(message, kind.wire)
    body.SetInParent()
    _encode_fields(value, body, kind.fields)


def _oneof_from_pb(table: Mapping[str, _Kind[Any]], message: Any, oneof: str, what: str) -> Any:
    kind = _lookup_wire(table, message, oneof, what)
    return kind.model(**_decode_fields(getattr(message, kind.wire), kind.fields))


def entity_batch_result_to_pb(outcome: EntityBatchOutcome, token: str) -> pb.EntityBatchResult:
    message = pb.EntityBatchResult(completionToken=token)
    for result in outcome.results:
        _oneof_to_pb(_RESULT_BY_MODEL, result, message.results.add())
    for action in outcome.actions:
        _oneof_to_pb(_ENTITY_ACTION_BY_MODEL, action, message.actions.add())
    _put_optional_wrapped(message, "entityState", outcome.state)
    _put_failure(message, "failureDetails", outcome.failure)
    return message


def entity_batch_result_from_pb(message: pb.EntityBatchResult) -> EntityBatchOutcome:
    """The worker's outcome (which work item it completes: ``completionToken``). A result or an
    action of no kind we know is ``UnsupportedMessageError``; ``operationInfos`` are not read (the
    backend knows whom each operation answers)."""
    results: list[OperationResult] = [
        _oneof_from_pb(_RESULT_BY_WIRE, r, "resultType", "operation result") for r in message.results
    ]
    actions: list[EntityAction] = [
        _oneof_from_pb(_ENTITY_ACTION_BY_WIRE, a, "operationActionType", "entity operation action")
        for a in message.actions
    ]
    return EntityBatchOutcome(
        results=results,
        actions=actions,
        state=payload_from_pb(message, "entityState"),
        failure=_get_optional_failure(message, "failureDetails"),
    )


_ENTITY_METADATA_FIELDS = (
    _Field("instance_id", "instanceId", _SCALAR),
    _Field("last_modified", "lastModifiedTime", _TIME),
    _Field("backlog_queue_size", "backlogQueueSize", _SCALAR),
    _Field("locked_by", "lockedBy", _PAYLOAD),
    _Field("serialized_state", "serializedState", _PAYLOAD),
)


def entity_metadata_to_pb(metadata: EntityMetadata) -> pb.EntityMetadata:
    message = pb.EntityMetadata()
    _encode_fields(metadata, message, _ENTITY_METADATA_FIELDS)
    return message


def entity_metadata_from_pb(message: pb.EntityMetadata) -> EntityMetadata:
    return EntityMetadata(**_decode_fields(message, _ENTITY_METADATA_FIELDS))


def entity_response_to_pb(metadata: EntityMetadata | None) -> pb.GetEntityResponse:
    if metadata is None:
        return pb.GetEntityResponse(exists=False)
    return pb.GetEntityResponse(exists=True, entity=entity_metadata_to_pb(metadata))


def _get_optional_int(message: Any, field: str) -> int | None:
    return int(getattr(message, field).value) if message.HasField(field) else None


_OPTIONAL_INT = _Codec(_put_optional_wrapped, _get_optional_int)

_ENTITY_QUERY_FIELDS = (
    _Field("instance_id_starts_with", "instanceIdStartsWith", _PAYLOAD),
    _Field("last_modified_from", "lastModifiedFrom", _OPTIONAL_TIME),
    _Field("last_modified_to", "lastModifiedTo", _OPTIONAL_TIME),
    _Field("include_state", "includeState", _SCALAR),
    _Field("include_transient", "includeTransient", _SCALAR),
    _Field("page_size", "pageSize", _OPTIONAL_INT),
    _Field("continuation_token", "continuationToken", _PAYLOAD),
)


def entity_query_from_pb(message: pb.EntityQuery) -> EntityQuery:
    """Our query; an unset or non-positive ``pageSize`` is our default page size, empty texts are
    unset filters."""
    decoded = _decode_fields(message, _ENTITY_QUERY_FIELDS)
    if not decoded["page_size"] or decoded["page_size"] <= 0:
        del decoded["page_size"]
    for optional_text in ("instance_id_starts_with", "continuation_token"):
        decoded[optional_text] = decoded[optional_text] or None
    return EntityQuery(**decoded)


def entity_query_result_to_pb(result: EntityQueryResult) -> pb.QueryEntitiesResponse:
    message = pb.QueryEntitiesResponse(entities=[entity_metadata_to_pb(m) for m in result.entities])
    _put_optional_wrapped(message, "continuationToken", result.continuation_token)
    return message


def clean_entity_storage_result_to_pb(result: CleanEntityStorageResult) -> pb.CleanEntityStorageResponse:
    message = pb.CleanEntityStorageResponse(
        emptyEntitiesRemoved=result.empty_entities_removed,
        orphanedLocksReleased=result.orphaned_locks_released,
    )
    _put_optional_wrapped(message, "continuationToken", result.continuation_token)
    return message
