"""The event model: history events and orchestrator actions.

These mirror the Durable Task protocol's ``HistoryEvent`` and ``OrchestratorAction`` messages
(same kinds, same fields, snake_case names), so the gRPC edge maps them one to one
(``duratask.protocol.convert``). They are immutable ``msgspec`` structs: the storage keeps them as
compact JSON, tagged by class name.

Payloads (``input``, ``result``, ``data``) are already-serialized JSON text, or ``None``.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from .models import OrchestrationRuntimeStatus, TaskFailureDetails


class ParentInstance(msgspec.Struct, frozen=True, kw_only=True):
    """Who started a sub-orchestration, and under which task id of the parent."""

    instance_id: str
    name: str
    task_scheduled_id: int
    execution_id: str | None = None
    version: str | None = None


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag=True, omit_defaults=True):
    """Base of every history event. ``event_id`` is the task sequence number where it applies."""

    timestamp: datetime
    event_id: int = -1


class ExecutionStarted(_Event, frozen=True, kw_only=True):
    name: str
    instance_id: str
    execution_id: str
    input: str | None = None
    version: str | None = None
    parent: ParentInstance | None = None
    scheduled_start: datetime | None = None
    tags: dict[str, str] | None = None


class ExecutionCompleted(_Event, frozen=True, kw_only=True):
    status: OrchestrationRuntimeStatus
    result: str | None = None
    failure: TaskFailureDetails | None = None


class ExecutionTerminated(_Event, frozen=True, kw_only=True):
    input: str | None = None
    recurse: bool = False


class ExecutionSuspended(_Event, frozen=True, kw_only=True):
    input: str | None = None


class ExecutionResumed(_Event, frozen=True, kw_only=True):
    input: str | None = None


class ExecutionRewound(_Event, frozen=True, kw_only=True):
    reason: str | None = None


class TaskScheduled(_Event, frozen=True, kw_only=True):
    name: str
    input: str | None = None
    version: str | None = None


class TaskCompleted(_Event, frozen=True, kw_only=True):
    task_scheduled_id: int
    result: str | None = None


class TaskFailed(_Event, frozen=True, kw_only=True):
    task_scheduled_id: int
    failure: TaskFailureDetails


class SubOrchestrationInstanceCreated(_Event, frozen=True, kw_only=True):
    instance_id: str
    name: str
    input: str | None = None
    version: str | None = None


class SubOrchestrationInstanceCompleted(_Event, frozen=True, kw_only=True):
    task_scheduled_id: int
    result: str | None = None


class SubOrchestrationInstanceFailed(_Event, frozen=True, kw_only=True):
    task_scheduled_id: int
    failure: TaskFailureDetails


class TimerCreated(_Event, frozen=True, kw_only=True):
    fire_at: datetime


class TimerFired(_Event, frozen=True, kw_only=True):
    fire_at: datetime
    timer_id: int


class OrchestratorStarted(_Event, frozen=True, kw_only=True):
    pass


class OrchestratorCompleted(_Event, frozen=True, kw_only=True):
    pass


class EventSent(_Event, frozen=True, kw_only=True):
    instance_id: str
    name: str
    input: str | None = None


class EventRaised(_Event, frozen=True, kw_only=True):
    name: str
    input: str | None = None


class ContinueAsNew(_Event, frozen=True, kw_only=True):
    input: str | None = None


# --- entities -----------------------------------------------------------------------------------
# Durable entities are instances with ids "@name@key". These events travel between orchestrations
# and entities (in inboxes), and an orchestration's history records the messages it sent. As in the
# protocol, a recorded message names its target; a delivered one names the orchestration that sent it.


class EntityOperationSignaled(_Event, frozen=True, kw_only=True):
    """A one-way operation on an entity (nobody waits for its result)."""

    request_id: str
    operation: str
    scheduled_time: datetime | None = None
    input: str | None = None
    target_instance_id: str | None = None


class EntityOperationCalled(_Event, frozen=True, kw_only=True):
    """An operation whose result goes back to the calling orchestration."""

    request_id: str
    operation: str
    scheduled_time: datetime | None = None
    input: str | None = None
    parent_instance_id: str | None = None
    parent_execution_id: str | None = None
    target_instance_id: str | None = None


class EntityOperationCompleted(_Event, frozen=True, kw_only=True):
    """The result of a called operation, delivered to its caller."""

    request_id: str
    output: str | None = None


class EntityOperationFailed(_Event, frozen=True, kw_only=True):
    """A called operation raised; delivered to its caller."""

    request_id: str
    failure: TaskFailureDetails


class EntityLockRequested(_Event, frozen=True, kw_only=True):
    """A request to lock ``lock_set`` (sorted) for a critical section; it visits the entities in
    order, ``position`` being the one it is at."""

    critical_section_id: str
    lock_set: list[str] = msgspec.field(default_factory=list)
    position: int = 0
    parent_instance_id: str | None = None


class EntityLockGranted(_Event, frozen=True, kw_only=True):
    """Every entity of a critical section's lock set is locked; delivered to the orchestration."""

    critical_section_id: str


class EntityUnlockSent(_Event, frozen=True, kw_only=True):
    """The end of a critical section: the entity may serve others again."""

    critical_section_id: str
    parent_instance_id: str | None = None
    target_instance_id: str | None = None


#: What an orchestration sends to an entity (the protocol's ``SendEntityMessageAction``).
EntityMessage = EntityOperationSignaled | EntityOperationCalled | EntityLockRequested | EntityUnlockSent


HistoryEvent = (
    ExecutionStarted
    | ExecutionCompleted
    | ExecutionTerminated
    | ExecutionSuspended
    | ExecutionResumed
    | ExecutionRewound
    | TaskScheduled
    | TaskCompleted
    | TaskFailed
    | SubOrchestrationInstanceCreated
    | SubOrchestrationInstanceCompleted
    | SubOrchestrationInstanceFailed
    | TimerCreated
    | TimerFired
    | OrchestratorStarted
    | OrchestratorCompleted
    | EventSent
    | EventRaised
    | ContinueAsNew
    | EntityOperationSignaled
    | EntityOperationCalled
    | EntityOperationCompleted
    | EntityOperationFailed
    | EntityLockRequested
    | EntityLockGranted
    | EntityUnlockSent
)


# --- actions: what one orchestrator episode asks for -------------------------------------------


class _Action(msgspec.Struct, frozen=True, kw_only=True, tag=True, omit_defaults=True):
    """Base of every orchestrator action. ``id`` is the task sequence number it creates."""

    id: int


class ScheduleTask(_Action, frozen=True, kw_only=True):
    name: str
    input: str | None = None
    version: str | None = None


class CreateSubOrchestration(_Action, frozen=True, kw_only=True):
    instance_id: str
    name: str
    input: str | None = None
    version: str | None = None


class CreateTimer(_Action, frozen=True, kw_only=True):
    fire_at: datetime


class SendEvent(_Action, frozen=True, kw_only=True):
    instance_id: str
    name: str
    data: str | None = None


class CompleteOrchestration(_Action, frozen=True, kw_only=True):
    """Ends the execution. ``status`` CONTINUED_AS_NEW restarts it with ``result`` as the new input."""

    status: OrchestrationRuntimeStatus
    result: str | None = None
    failure: TaskFailureDetails | None = None
    new_version: str | None = None
    carryover_events: list[HistoryEvent] = msgspec.field(default_factory=list)


class TerminateOrchestration(_Action, frozen=True, kw_only=True):
    instance_id: str
    reason: str | None = None
    recurse: bool = True


class SendEntityMessage(_Action, frozen=True, kw_only=True):
    """Send ``message`` to an entity: a signal, a call, a lock request or an unlock. Its timestamp
    is set when the backend records the message in the sender's history."""

    message: EntityMessage


OrchestratorAction = (
    ScheduleTask
    | CreateSubOrchestration
    | CreateTimer
    | SendEvent
    | CompleteOrchestration
    | TerminateOrchestration
    | SendEntityMessage
)


_event_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(HistoryEvent)
_events_decoder = msgspec.json.Decoder(list[HistoryEvent])


def encode_event(event: HistoryEvent) -> bytes:
    """Compact JSON of one event (the storage form)."""
    return _event_encoder.encode(event)


def decode_event(data: bytes | str) -> HistoryEvent:
    """Inverse of ``encode_event``."""
    event: HistoryEvent = _event_decoder.decode(data)
    return event


def encode_events(events: list[HistoryEvent]) -> bytes:
    return _event_encoder.encode(events)


def decode_events(data: bytes | str) -> list[HistoryEvent]:
    return _events_decoder.decode(data)
