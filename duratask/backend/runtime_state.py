"""The pure heart of the backend: one orchestration episode's actions become a storage commit.

``plan_episode(instance, new_events, actions, custom_status, now)`` decides everything an
episode changes: which history events are appended (the new events, then one event per action,
in order — the invariant the worker's executor cache relies on), the instance's new status and
output, the activities to queue, the timers and messages to deliver, the sub-orchestrations to
create, and what the parent hears when the instance finishes. No I/O: the caller stores the
result (``OrchestrationCommit``) under its lease.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from .. import history as h
from ..models import OrchestrationRuntimeStatus as Status
from ..models import TaskFailureDetails
from ..storage.base import ActivityTask, InboxMessage, InstanceRecord, NewInstance, OrchestrationCommit


def new_execution_id() -> str:
    return uuid.uuid4().hex


class _Episode:
    """Accumulates the effects of one episode while its actions are applied in order."""

    def __init__(self, instance: InstanceRecord, token: str, now: datetime) -> None:
        self.instance = instance
        self.now = now
        self.commit = OrchestrationCommit(token=token, instance=instance, history_append=[])

    def append(self, event: h.HistoryEvent) -> None:
        self.commit.history_append.append(event)

    def send(self, instance_id: str, event: h.HistoryEvent, visible_at: datetime | None = None) -> None:
        self.commit.messages.append(
            InboxMessage(instance_id=instance_id, event=event, visible_at=visible_at or self.now)
        )


def _schedule_task(ep: _Episode, a: h.ScheduleTask) -> None:
    ep.append(h.TaskScheduled(timestamp=ep.now, event_id=a.id, name=a.name, input=a.input, version=a.version))
    ep.commit.activities.append(
        ActivityTask(
            instance_id=ep.instance.instance_id,
            execution_id=ep.instance.execution_id,
            task_id=a.id,
            name=a.name,
            input=a.input,
            version=a.version,
        )
    )


def _create_timer(ep: _Episode, a: h.CreateTimer) -> None:
    ep.append(h.TimerCreated(timestamp=ep.now, event_id=a.id, fire_at=a.fire_at))
    fired = h.TimerFired(timestamp=a.fire_at, fire_at=a.fire_at, timer_id=a.id)
    ep.send(ep.instance.instance_id, fired, visible_at=a.fire_at)


def _create_sub_orchestration(ep: _Episode, a: h.CreateSubOrchestration) -> None:
    parent = ep.instance
    ep.append(
        h.SubOrchestrationInstanceCreated(
            timestamp=ep.now,
            event_id=a.id,
            instance_id=a.instance_id,
            name=a.name,
            input=a.input,
            version=a.version,
        )
    )
    execution_id = new_execution_id()
    started = h.ExecutionStarted(
        timestamp=ep.now,
        name=a.name,
        instance_id=a.instance_id,
        execution_id=execution_id,
        input=a.input,
        version=a.version,
        parent=h.ParentInstance(
            instance_id=parent.instance_id,
            name=parent.name,
            task_scheduled_id=a.id,
            execution_id=parent.execution_id,
            version=parent.version,
        ),
    )
    record = InstanceRecord(
        instance_id=a.instance_id,
        name=a.name,
        execution_id=execution_id,
        status=Status.PENDING,
        created_at=ep.now,
        last_updated_at=ep.now,
        input=a.input,
        version=a.version,
        parent_instance_id=parent.instance_id,
        parent_task_id=a.id,
    )
    ep.commit.new_instances.append(NewInstance(record=record, started=started, visible_at=ep.now))


def _send_event(ep: _Episode, a: h.SendEvent) -> None:
    ep.append(
        h.EventSent(timestamp=ep.now, event_id=a.id, instance_id=a.instance_id, name=a.name, input=a.data)
    )
    ep.send(a.instance_id, h.EventRaised(timestamp=ep.now, name=a.name, input=a.data))


def _terminate_other(ep: _Episode, a: h.TerminateOrchestration) -> None:
    ep.send(a.instance_id, h.ExecutionTerminated(timestamp=ep.now, input=a.reason, recurse=a.recurse))


def _complete(ep: _Episode, a: h.CompleteOrchestration) -> None:
    if a.status is Status.CONTINUED_AS_NEW:
        _continue_as_new(ep, a)
        return
    inst = ep.instance
    ep.append(
        h.ExecutionCompleted(
            timestamp=ep.now, event_id=a.id, status=a.status, result=a.result, failure=a.failure
        )
    )
    inst.status = a.status
    inst.output = a.result
    inst.failure = a.failure
    inst.completed_at = ep.now
    if inst.parent_instance_id is not None and inst.parent_task_id is not None:
        ep.send(inst.parent_instance_id, _result_for_parent(inst, a, ep.now))


def _result_for_parent(inst: InstanceRecord, a: h.CompleteOrchestration, now: datetime) -> h.HistoryEvent:
    task_id = inst.parent_task_id if inst.parent_task_id is not None else -1
    if a.status is Status.COMPLETED:
        return h.SubOrchestrationInstanceCompleted(timestamp=now, task_scheduled_id=task_id, result=a.result)
    failure = a.failure or TaskFailureDetails(
        error_type="OrchestrationTerminated" if a.status is Status.TERMINATED else a.status.name.title(),
        error_message=f"sub-orchestration {inst.instance_id!r} ended with status {a.status.name}",
    )
    return h.SubOrchestrationInstanceFailed(timestamp=now, task_scheduled_id=task_id, failure=failure)


def _continue_as_new(ep: _Episode, a: h.CompleteOrchestration) -> None:
    """Start a fresh execution: history reset, the new input, carried-over events after it."""
    inst = ep.instance
    inst.execution_id = new_execution_id()
    inst.status = Status.RUNNING
    inst.input = a.result
    inst.output = None
    inst.failure = None
    if a.new_version is not None:
        inst.version = a.new_version
    ep.commit.reset_history = True
    ep.commit.history_append.clear()
    ep.commit.activities.clear()  # tasks of the old execution that were never started
    ep.commit.messages = [m for m in ep.commit.messages if m.instance_id != inst.instance_id]
    started = h.ExecutionStarted(
        timestamp=ep.now,
        name=inst.name,
        instance_id=inst.instance_id,
        execution_id=inst.execution_id,
        input=a.result,
        version=inst.version,
        parent=_parent_of(inst),
    )
    ep.send(inst.instance_id, started)
    for event in a.carryover_events:
        ep.send(inst.instance_id, event)


def _parent_of(inst: InstanceRecord) -> h.ParentInstance | None:
    if inst.parent_instance_id is None or inst.parent_task_id is None:
        return None
    return h.ParentInstance(
        instance_id=inst.parent_instance_id, name="", task_scheduled_id=inst.parent_task_id
    )


_ACTION_HANDLERS: dict[type, Callable[[_Episode, object], None]] = {
    h.ScheduleTask: _schedule_task,  # type: ignore[dict-item]
    h.CreateTimer: _create_timer,  # type: ignore[dict-item]
    h.CreateSubOrchestration: _create_sub_orchestration,  # type: ignore[dict-item]
    h.SendEvent: _send_event,  # type: ignore[dict-item]
    h.TerminateOrchestration: _terminate_other,  # type: ignore[dict-item]
    h.CompleteOrchestration: _complete,  # type: ignore[dict-item]
}


def _status_after_events(status: Status, events: list[h.HistoryEvent]) -> Status:
    """Starting, suspending and resuming show in the status as soon as their event is processed."""
    for event in events:
        if isinstance(event, h.ExecutionStarted) and status is Status.PENDING:
            status = Status.RUNNING
        elif isinstance(event, h.ExecutionSuspended) and not status.is_terminal:
            status = Status.SUSPENDED
        elif isinstance(event, h.ExecutionResumed) and status is Status.SUSPENDED:
            status = Status.RUNNING
    return status


def plan_episode(
    instance: InstanceRecord,
    token: str,
    new_events: list[h.HistoryEvent],
    actions: list[h.OrchestratorAction],
    custom_status: str | None,
    now: datetime,
) -> OrchestrationCommit:
    """The commit for one episode: ``new_events`` were delivered, the orchestrator answered ``actions``.

    ``instance`` is modified in place and becomes the commit's instance row.
    """
    ep = _Episode(instance, token, now)
    for event in new_events:
        ep.append(event)
    instance.status = _status_after_events(instance.status, new_events)
    instance.custom_status = custom_status
    instance.last_updated_at = now
    for action in actions:
        _ACTION_HANDLERS[type(action)](ep, action)
        if instance.status.is_terminal or ep.commit.reset_history:
            break  # nothing after the completing action counts
    return ep.commit


def plan_discard(instance: InstanceRecord, token: str) -> OrchestrationCommit:
    """Consume messages delivered to a finished instance without changing it (late timers, events)."""
    return OrchestrationCommit(token=token, instance=instance, history_append=[])


def plan_terminate_unstarted(
    instance: InstanceRecord, token: str, terminated: h.ExecutionTerminated, now: datetime
) -> OrchestrationCommit:
    """Terminate an instance that never ran (e.g. a scheduled start still in the future)."""
    started = h.ExecutionStarted(
        timestamp=now,
        name=instance.name,
        instance_id=instance.instance_id,
        execution_id=instance.execution_id,
        input=instance.input,
        version=instance.version,
        parent=_parent_of(instance),
    )
    action = h.CompleteOrchestration(id=-1, status=Status.TERMINATED, result=terminated.input)
    return plan_episode(instance, token, [started, terminated], [action], instance.custom_status, now)
