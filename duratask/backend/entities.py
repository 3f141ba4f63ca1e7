"""Durable entities: the pure planning of entity work, as ``runtime_state`` is for orchestrations.

An entity is an instance with the id ``@name@key`` (the official SDKs lower-case the name). Its
row in the storage holds:

- ``output``: the entity's state (JSON text); ``None`` means the entity does not exist (never
  written, or deleted by an operation);
- ``custom_status``: its ``EntityStatus`` as JSON (which orchestration holds its lock, and how
  long its backlog is);
- its history: the *backlog*, messages that arrived while another orchestration held the lock,
  in arrival order;
- its inbox: operations (signals and calls), lock requests and unlocks sent to it, and markers
  that only wake it (``ExecutionStarted``, which creating the row puts there);
- ``status`` RUNNING for as long as the row exists. Entity rows are never terminal, so creating
  one that exists changes nothing (it is never replaced, its inbox never dropped).

One lease of an entity handles its messages in order (``plan_lease``): operations go into a
batch for a worker, lock requests and unlocks are decided here, and while an orchestration holds
the lock, messages from anyone else wait in the backlog. ``plan_commit`` turns the plan and the
worker's outcome into one fenced ``OrchestrationCommit``: new state, results to the callers,
signals and orchestrations the operations started, lock grants, the backlog. A lease that is lost
(a worker died mid-batch) changes nothing, and its messages are delivered again: every effect of
a batch is applied once, with the state it produced.

Critical sections: an orchestration's lock request lists the entities to lock, sorted (the SDKs
sort them: no deadlock). It visits them in that order; each locks itself for the orchestration
and passes the request on, and the last one tells the orchestration (``EntityLockGranted``).

Orchestrations send entity messages with ``SendEntityMessage`` actions; ``plan_episode`` records
them in the sender's history and addresses them (``plan_sends``), creating the target entity row
in the same commit if it does not exist.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from .. import history as h
from ..models import OrchestrationRuntimeStatus as Status
from ..models import TaskFailureDetails
from ..storage.base import InboxMessage, InstanceRecord, NewInstance, OrchestrationCommit
from . import runtime_state

ENTITY_ID_PREFIX = "@"
#: Most operations in one batch; the rest wait for the next batch, in order.
DEFAULT_MAX_BATCH = 100

Operation = h.EntityOperationSignaled | h.EntityOperationCalled


# --- ids -----------------------------------------------------------------------------------------


def is_entity_id(instance_id: str) -> bool:
    """Whether the id names an entity (``@name@key``) rather than an orchestration."""
    return instance_id.startswith(ENTITY_ID_PREFIX)


def parse_entity_id(instance_id: str) -> tuple[str, str]:
    """(name, key) of ``@name@key``; ``ValueError`` for anything else."""
    name, sep, key = instance_id[1:].partition("@") if is_entity_id(instance_id) else ("", "", "")
    if not sep or not name or not key:
        raise ValueError(f"{instance_id!r} is not an entity instance id ('@name@key')")
    return name, key


def normalize_prefix(prefix: str | None) -> str:
    """An entity query's id prefix as the official SDKs mean it: ``@`` in front if missing, and the
    name part lower-cased (entity names are); ``None`` or empty means every entity."""
    if not prefix:
        return ENTITY_ID_PREFIX
    if not prefix.startswith(ENTITY_ID_PREFIX):
        prefix = ENTITY_ID_PREFIX + prefix
    name, sep, key = prefix[1:].partition("@")
    return f"@{name.lower()}{sep}{key}"


# --- what the scheduler keeps about an entity -------------------------------------------------


class EntityStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Stored as JSON in the entity row's ``custom_status``."""

    #: the orchestration holding the lock, and for which critical section
    locked_by: str | None = None
    critical_section_id: str | None = None
    #: messages waiting in the backlog (the entity's history)
    backlog: int = 0


_status_decoder = msgspec.json.Decoder(EntityStatus)
_encoder = msgspec.json.Encoder()


def read_status(record: InstanceRecord) -> EntityStatus:
    return _status_decoder.decode(record.custom_status) if record.custom_status else EntityStatus()


def _write_status(status: EntityStatus) -> str | None:
    if status == EntityStatus():
        return None
    return _encoder.encode(status).decode()


def new_entity(instance_id: str, now: datetime) -> NewInstance:
    """The row of an entity that does not exist yet, with the marker that wakes it once."""
    name, _ = parse_entity_id(instance_id)
    execution_id = runtime_state.new_execution_id()
    record = InstanceRecord(
        instance_id=instance_id,
        name=name,
        execution_id=execution_id,
        status=Status.RUNNING,
        created_at=now,
        last_updated_at=now,
    )
    return NewInstance(record=record, started=_marker(record, now), visible_at=now)


def _marker(record: InstanceRecord, now: datetime) -> h.ExecutionStarted:
    return h.ExecutionStarted(
        timestamp=now, name=record.name, instance_id=record.instance_id, execution_id=record.execution_id
    )


# --- work items and their outcomes (the protocol's entity messages) --------------------------


class EntityWorkItem(msgspec.Struct, kw_only=True):
    """One batch of operations for a worker: run them in order from ``state``."""

    instance_id: str
    execution_id: str
    name: str
    token: str
    state: str | None
    operations: list[Operation]


class OperationSucceeded(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    result: str | None = None


class OperationFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    failure: TaskFailureDetails


OperationResult = OperationSucceeded | OperationFailed


class SignalEntityAction(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """An operation signalled another entity (the protocol's ``SendSignalAction``)."""

    instance_id: str
    operation: str
    input: str | None = None
    scheduled_time: datetime | None = None


class StartOrchestrationAction(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """An operation started an orchestration (the protocol's ``StartNewOrchestrationAction``)."""

    instance_id: str
    name: str
    input: str | None = None
    version: str | None = None
    scheduled_time: datetime | None = None


EntityAction = SignalEntityAction | StartOrchestrationAction


class EntityBatchOutcome(msgspec.Struct, kw_only=True):
    """What a worker made of a batch (the protocol's ``EntityBatchResult``).

    ``results`` answer the operations in order; fewer results than operations leaves the rest for
    the next batch. ``failure`` without results means the batch failed as a whole: every operation
    fails with it and the state does not change.
    """

    results: list[OperationResult]
    actions: list[EntityAction] = msgspec.field(default_factory=list)
    state: str | None = None
    failure: TaskFailureDetails | None = None


# --- client-side views -----------------------------------------------------------------------


class EntityMetadata(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    last_modified: datetime
    backlog_queue_size: int = 0
    locked_by: str | None = None
    serialized_state: str | None = None


class EntityQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters AND-ed; ``instance_id_starts_with`` as ``normalize_prefix`` reads it; modification
    times from inclusive, to exclusive; ``include_transient`` adds entities without state."""

    instance_id_starts_with: str | None = None
    last_modified_from: datetime | None = None
    last_modified_to: datetime | None = None
    include_state: bool = True
    include_transient: bool = False
    page_size: int = 100
    continuation_token: str | None = None


class EntityQueryResult(msgspec.Struct, frozen=True, kw_only=True):
    entities: list[EntityMetadata]
    continuation_token: str | None = None


class CleanEntityStorageResult(msgspec.Struct, frozen=True, kw_only=True):
    empty_entities_removed: int = 0
    orphaned_locks_released: int = 0
    continuation_token: str | None = None


def exists(record: InstanceRecord) -> bool:
    """An entity exists while it has state; one that is only locked or waiting is transient."""
    return record.output is not None


def is_empty(record: InstanceRecord) -> bool:
    """No state, no lock, no backlog: nothing would be lost by removing the row (if its inbox is empty)."""
    status = read_status(record)
    return record.output is None and status.locked_by is None and status.backlog == 0


def metadata_of(record: InstanceRecord, include_state: bool) -> EntityMetadata:
    status = read_status(record)
    return EntityMetadata(
        instance_id=record.instance_id,
        last_modified=record.last_updated_at,
        backlog_queue_size=status.backlog,
        locked_by=status.locked_by,
        serialized_state=record.output if include_state else None,
    )


def matches(record: InstanceRecord, query: EntityQuery) -> bool:
    """Whether an entity row passes the query's filters other than the id prefix."""
    if not query.include_transient and not exists(record):
        return False
    modified = record.last_updated_at
    if query.last_modified_from is not None and modified < query.last_modified_from:
        return False
    return query.last_modified_to is None or modified < query.last_modified_to


# --- planning one lease ----------------------------------------------------------------------


@dataclass
class EntityPlan:
    """What one lease of an entity decided before any worker ran: the batch to run, the lock
    changes and the messages they cause, the backlog that stays. ``plan_commit`` completes it."""

    instance: InstanceRecord
    token: str
    now: datetime
    operations: list[Operation] = field(default_factory=list)
    backlog: list[h.HistoryEvent] = field(default_factory=list)
    status: EntityStatus = field(default_factory=EntityStatus)
    messages: list[InboxMessage] = field(default_factory=list)
    new_instances: list[NewInstance] = field(default_factory=list)
    #: messages were left for a next lease though the inbox may be empty: wake the entity again
    wake: bool = False

    def work_item(self) -> EntityWorkItem:
        inst = self.instance
        return EntityWorkItem(
            instance_id=inst.instance_id,
            execution_id=inst.execution_id,
            name=inst.name,
            token=self.token,
            state=inst.output,
            operations=list(self.operations),
        )

    def send(self, instance_id: str, event: h.HistoryEvent, visible_at: datetime | None = None) -> None:
        self.messages.append(
            InboxMessage(instance_id=instance_id, event=event, visible_at=visible_at or self.now)
        )

    def send_to_entity(
        self, instance_id: str, event: h.HistoryEvent, visible_at: datetime | None = None
    ) -> None:
        """A message to an entity, whose row is created in the same commit if it does not exist."""
        self.new_instances.append(new_entity(instance_id, self.now))
        self.send(instance_id, event, visible_at)


class _Lease:
    """Walks one lease's messages in order, deciding what each one does."""

    def __init__(self, plan: EntityPlan, queue: Iterable[h.HistoryEvent], max_batch: int) -> None:
        self.plan = plan
        self.pending: deque[h.HistoryEvent] = deque(queue)
        self.deferred: list[h.HistoryEvent] = []
        self.max_batch = max_batch

    def run(self) -> None:
        while self.pending:
            message = self.pending.popleft()
            handler = _HANDLERS.get(type(message))
            if handler is None:
                continue  # wake-up markers, and events entities have no use for
            if not self._admits(message):
                self.deferred.append(message)
                continue
            if isinstance(message, (h.EntityOperationSignaled, h.EntityOperationCalled)) and (
                len(self.plan.operations) >= self.max_batch
            ):
                self.pending.appendleft(message)
                self.plan.wake = True
                break
            handler(self, message)
        self.plan.backlog = [*self.deferred, *self.pending]

    def _admits(self, message: h.HistoryEvent) -> bool:
        """While an orchestration holds the lock, only its calls and its unlock get through."""
        status = self.plan.status
        if status.locked_by is None:
            return True
        if isinstance(message, h.EntityOperationCalled):
            return message.parent_instance_id == status.locked_by
        if isinstance(message, h.EntityUnlockSent):
            return message.critical_section_id == status.critical_section_id
        return False

    def release_deferred(self) -> None:
        """The lock is free: what waited comes first again, in the order it arrived."""
        self.pending.extendleft(reversed(self.deferred))
        self.deferred = []


def _on_operation(lease: _Lease, message: Operation) -> None:
    lease.plan.operations.append(message)


def _on_lock_requested(lease: _Lease, message: h.EntityLockRequested) -> None:
    plan = lease.plan
    if message.parent_instance_id is None:
        return  # nobody to grant it to
    plan.status.locked_by = message.parent_instance_id
    plan.status.critical_section_id = message.critical_section_id
    following = message.position + 1
    if following < len(message.lock_set):
        forwarded = msgspec.structs.replace(message, timestamp=plan.now, position=following)
        plan.send_to_entity(message.lock_set[following], forwarded)
    else:
        granted = h.EntityLockGranted(timestamp=plan.now, critical_section_id=message.critical_section_id)
        plan.send(message.parent_instance_id, granted)


def _on_unlock(lease: _Lease, message: h.EntityUnlockSent) -> None:
    status = lease.plan.status
    if status.locked_by is None or message.critical_section_id != status.critical_section_id:
        return  # a stale unlock (of a section already over): nothing to release
    status.locked_by = None
    status.critical_section_id = None
    lease.release_deferred()


_HANDLERS: dict[type, Callable[[_Lease, object], None]] = {
    h.EntityOperationSignaled: _on_operation,  # type: ignore[dict-item]
    h.EntityOperationCalled: _on_operation,  # type: ignore[dict-item]
    h.EntityLockRequested: _on_lock_requested,  # type: ignore[dict-item]
    h.EntityUnlockSent: _on_unlock,  # type: ignore[dict-item]
}


def plan_lease(
    instance: InstanceRecord,
    token: str,
    backlog: list[h.HistoryEvent],
    new_events: list[h.HistoryEvent],
    now: datetime,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> EntityPlan:
    """Decide one lease: ``backlog`` (the entity's history) then ``new_events`` (its inbox), in order.

    The plan's ``operations`` are the batch a worker must run (none: ``plan_commit(plan, None)``
    stores the plan at once). ``instance`` is left as it is until ``plan_commit``.
    """
    status = read_status(instance)
    plan = EntityPlan(
        instance=instance,
        token=token,
        now=now,
        status=EntityStatus(locked_by=status.locked_by, critical_section_id=status.critical_section_id),
    )
    _Lease(plan, [*backlog, *new_events], max(1, max_batch)).run()
    return plan


# --- completing a lease ----------------------------------------------------------------------


def plan_commit(plan: EntityPlan, outcome: EntityBatchOutcome | None, now: datetime) -> OrchestrationCommit:
    """The commit of a lease: ``outcome`` is the worker's answer to the plan's batch (``None`` when
    the plan has no operations). The plan's instance row becomes the commit's row."""
    inst = plan.instance
    backlog = list(plan.backlog)
    messages = list(plan.messages)
    new_instances = list(plan.new_instances)
    wake = plan.wake
    if plan.operations and outcome is None:  # nobody ran them: they wait for the next batch
        backlog = [*plan.operations, *backlog]
        wake = True
    elif outcome is not None and plan.operations:
        answered, unanswered, results, state = _settle(plan.operations, outcome, inst.output)
        if unanswered:  # the worker stopped early: the rest run in the next batch, first
            backlog = [*unanswered, *backlog]
            wake = True
        inst.output = state
        for operation, result in zip(answered, results):
            reply = _reply(operation, result, now)
            if reply is not None:
                messages.append(reply)
        if not (outcome.failure is not None and not outcome.results):
            for action in outcome.actions:
                _ACTION_HANDLERS[type(action)](action, now, messages, new_instances)
    status = EntityStatus(
        locked_by=plan.status.locked_by,
        critical_section_id=plan.status.critical_section_id,
        backlog=len(backlog),
    )
    inst.status = Status.RUNNING
    inst.custom_status = _write_status(status)
    inst.last_updated_at = now
    if wake:
        messages.append(InboxMessage(instance_id=inst.instance_id, event=_marker(inst, now), visible_at=now))
    return OrchestrationCommit(
        token=plan.token,
        instance=inst,
        history_append=backlog,
        reset_history=True,
        messages=messages,
        new_instances=new_instances,
    )


def _settle(
    operations: list[Operation], outcome: EntityBatchOutcome, state: str | None
) -> tuple[list[Operation], list[Operation], list[OperationResult], str | None]:
    """(answered operations, unanswered ones, their results, the state after)."""
    if outcome.failure is not None and not outcome.results:
        failed = OperationFailed(failure=outcome.failure)
        return list(operations), [], [failed] * len(operations), state
    count = min(len(outcome.results), len(operations))
    return operations[:count], operations[count:], outcome.results[:count], outcome.state


def _reply(operation: Operation, result: OperationResult, now: datetime) -> InboxMessage | None:
    """What the caller of an operation hears (signals have nobody to hear)."""
    if not isinstance(operation, h.EntityOperationCalled) or not operation.parent_instance_id:
        return None
    event: h.HistoryEvent
    if isinstance(result, OperationSucceeded):
        event = h.EntityOperationCompleted(
            timestamp=now, request_id=operation.request_id, output=result.result
        )
    else:
        event = h.EntityOperationFailed(
            timestamp=now, request_id=operation.request_id, failure=result.failure
        )
    return InboxMessage(instance_id=operation.parent_instance_id, event=event, visible_at=now)


def _signal(
    action: SignalEntityAction, now: datetime, messages: list[InboxMessage], new_instances: list[NewInstance]
) -> None:
    if not is_entity_id(action.instance_id):
        return  # validated when the outcome came in; never a message to an orchestration
    signal = h.EntityOperationSignaled(
        timestamp=now,
        request_id=uuid.uuid4().hex,
        operation=action.operation,
        scheduled_time=action.scheduled_time,
        input=action.input,
        target_instance_id=action.instance_id,
    )
    new_instances.append(new_entity(action.instance_id, now))
    messages.append(
        InboxMessage(
            instance_id=action.instance_id, event=signal, visible_at=_due(action.scheduled_time, now)
        )
    )


def _start_orchestration(
    action: StartOrchestrationAction,
    now: datetime,
    messages: list[InboxMessage],
    new_instances: list[NewInstance],
) -> None:
    """Created unless an unfinished instance has the id (then nothing happens)."""
    instance_id = action.instance_id or uuid.uuid4().hex
    execution_id = runtime_state.new_execution_id()
    start_at = (
        action.scheduled_time if action.scheduled_time is not None and action.scheduled_time > now else None
    )
    record = InstanceRecord(
        instance_id=instance_id,
        name=action.name,
        execution_id=execution_id,
        status=Status.PENDING,
        created_at=now,
        last_updated_at=now,
        input=action.input,
        version=action.version,
        scheduled_start=start_at,
    )
    started = h.ExecutionStarted(
        timestamp=now,
        name=action.name,
        instance_id=instance_id,
        execution_id=execution_id,
        input=action.input,
        version=action.version,
        scheduled_start=start_at,
    )
    new_instances.append(NewInstance(record=record, started=started, visible_at=start_at or now))


_ACTION_HANDLERS: dict[type, Callable[[object, datetime, list[InboxMessage], list[NewInstance]], None]] = {
    SignalEntityAction: _signal,  # type: ignore[dict-item]
    StartOrchestrationAction: _start_orchestration,  # type: ignore[dict-item]
}


def _due(scheduled_time: datetime | None, now: datetime) -> datetime:
    return scheduled_time if scheduled_time is not None and scheduled_time > now else now


# --- what orchestrations send ----------------------------------------------------------------


def target_of(message: h.EntityMessage) -> str | None:
    """The entity a message goes to (a lock request: the entity at its position)."""
    if isinstance(message, h.EntityLockRequested):
        in_range = 0 <= message.position < len(message.lock_set)
        return message.lock_set[message.position] if in_range else None
    return message.target_instance_id


def validate_message(message: h.EntityMessage) -> None:
    """``ValueError`` for a message no entity can act on (the server refuses the completion)."""
    target = target_of(message)
    if target is None:
        raise ValueError(f"{type(message).__name__} names no target entity")
    parse_entity_id(target)
    if isinstance(message, h.EntityLockRequested):
        for entity_id in message.lock_set:
            parse_entity_id(entity_id)
    if isinstance(message, (h.EntityOperationSignaled, h.EntityOperationCalled)) and not message.operation:
        raise ValueError(f"{type(message).__name__} to {target!r} names no operation")


def plan_sends(
    sender: InstanceRecord, actions: list[h.SendEntityMessage], now: datetime
) -> tuple[list[h.HistoryEvent], list[InboxMessage], list[NewInstance]]:
    """An orchestration's entity messages: (the events its history records, under the actions'
    ids; the messages to deliver, naming the sender; the entity rows to create if missing)."""
    recorded: list[h.HistoryEvent] = []
    messages: list[InboxMessage] = []
    new_instances: list[NewInstance] = []
    for action in actions:
        message = action.message
        target = target_of(message)
        if target is None or not is_entity_id(target):
            continue
        recorded.append(msgspec.structs.replace(message, timestamp=now, event_id=action.id))
        delivered = _from_sender(message, sender, now)
        visible_at = (
            _due(message.scheduled_time, now) if isinstance(message, h.EntityOperationSignaled) else now
        )
        new_instances.append(new_entity(target, now))
        messages.append(InboxMessage(instance_id=target, event=delivered, visible_at=visible_at))
    return recorded, messages, new_instances


def _from_sender(message: h.EntityMessage, sender: InstanceRecord, now: datetime) -> h.EntityMessage:
    if isinstance(message, h.EntityOperationCalled):
        return msgspec.structs.replace(
            message,
            timestamp=now,
            event_id=-1,
            parent_instance_id=message.parent_instance_id or sender.instance_id,
            parent_execution_id=message.parent_execution_id or sender.execution_id,
        )
    if isinstance(message, (h.EntityLockRequested, h.EntityUnlockSent)):
        return msgspec.structs.replace(
            message,
            timestamp=now,
            event_id=-1,
            parent_instance_id=message.parent_instance_id or sender.instance_id,
        )
    return msgspec.structs.replace(message, timestamp=now, event_id=-1)


def plan_episode(
    instance: InstanceRecord,
    token: str,
    new_events: list[h.HistoryEvent],
    actions: list[h.OrchestratorAction],
    custom_status: str | None,
    now: datetime,
) -> OrchestrationCommit:
    """``runtime_state.plan_episode`` for an episode that may also send entity messages.

    The other actions are planned as usual; the entity messages go out whatever their position
    (the official SDKs release locks next to the completing action). Their events join the
    history before the execution's end (none after a continue-as-new: the new execution did not
    send them).
    """
    sends = [a for a in actions if isinstance(a, h.SendEntityMessage)]
    if not sends:
        return runtime_state.plan_episode(instance, token, new_events, actions, custom_status, now)
    others: list[h.OrchestratorAction] = [a for a in actions if not isinstance(a, h.SendEntityMessage)]
    commit = runtime_state.plan_episode(instance, token, new_events, others, custom_status, now)
    recorded, messages, new_instances = plan_sends(commit.instance, sends, now)
    if not commit.reset_history:
        history = commit.history_append
        end = next((i for i, e in enumerate(history) if isinstance(e, h.ExecutionCompleted)), len(history))
        history[end:end] = recorded
    commit.new_instances.extend(new_instances)
    commit.messages.extend(messages)
    return commit
