"""Small builders of storage values for the contract tests."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec

from duratask.history import EventRaised, ExecutionStarted, HistoryEvent, TaskCompleted, TaskScheduled
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.storage.base import (
    ActivityCompletion,
    ActivityLease,
    ActivityTask,
    InboxMessage,
    InstanceRecord,
    NewInstance,
    OrchestrationCommit,
    OrchestrationLease,
    Storage,
)

LONG = 60.0  # a lease that does not expire during a test
SHORT = 0.05  # a lease that a test outlives by sleeping EXPIRE


def utcnow() -> datetime:
    return datetime.now(UTC)


async def expire() -> None:
    await asyncio.sleep(SHORT * 2)


def record(
    instance_id: str,
    *,
    status: Status = Status.PENDING,
    created_at: datetime | None = None,
    parent: str | None = None,
    name: str = "orchestrator",
    execution_id: str = "exec-1",
) -> InstanceRecord:
    now = created_at or utcnow()
    return InstanceRecord(
        instance_id=instance_id,
        name=name,
        execution_id=execution_id,
        status=status,
        created_at=now,
        last_updated_at=now,
        parent_instance_id=parent,
    )


def new_instance(
    instance_id: str,
    *,
    visible_at: datetime | None = None,
    status: Status = Status.PENDING,
    created_at: datetime | None = None,
    parent: str | None = None,
    execution_id: str = "exec-1",
) -> NewInstance:
    rec = record(instance_id, status=status, created_at=created_at, parent=parent, execution_id=execution_id)
    started = ExecutionStarted(
        timestamp=rec.created_at, name=rec.name, instance_id=instance_id, execution_id=execution_id
    )
    return NewInstance(record=rec, started=started, visible_at=visible_at or utcnow())


async def create(storage: Storage, instance_id: str, **kwargs: object) -> NewInstance:
    new = new_instance(instance_id, **kwargs)  # type: ignore[arg-type]
    await storage.create_instance(new)
    return new


def raised(name: str, data: str | None = None) -> EventRaised:
    return EventRaised(timestamp=utcnow(), name=name, input=data)


def message(instance_id: str, event: HistoryEvent, visible_at: datetime | None = None) -> InboxMessage:
    return InboxMessage(instance_id=instance_id, event=event, visible_at=visible_at or utcnow())


async def lease_all(
    storage: Storage, lease_seconds: float = LONG, limit: int = 100
) -> dict[str, OrchestrationLease]:
    return {
        lease.instance.instance_id: lease
        for lease in await storage.lease_orchestrations(limit, lease_seconds)
    }


async def lease_only(storage: Storage, lease_seconds: float = LONG) -> OrchestrationLease:
    leases = await storage.lease_orchestrations(10, lease_seconds)
    assert len(leases) == 1, leases
    return leases[0]


def commit_of(
    lease: OrchestrationLease,
    *,
    status: Status = Status.RUNNING,
    history: list[HistoryEvent] | None = None,
    token: str | None = None,
    **kwargs: object,
) -> OrchestrationCommit:
    """Commit the lease's new events as history, moving the instance to ``status``."""
    instance = msgspec.structs.replace(lease.instance, status=status, last_updated_at=utcnow())
    return OrchestrationCommit(
        token=lease.token if token is None else token,
        instance=instance,
        history_append=list(lease.new_events) if history is None else history,
        **kwargs,  # type: ignore[arg-type]
    )


def activity(
    instance_id: str, task_id: int, *, execution_id: str = "exec-1", name: str = "act"
) -> ActivityTask:
    return ActivityTask(
        instance_id=instance_id,
        execution_id=execution_id,
        task_id=task_id,
        name=name,
        input=f'"in-{task_id}"',
    )


def completion(lease: ActivityLease, result: str = '"done"', token: str | None = None) -> ActivityCompletion:
    return ActivityCompletion(
        activity_id=lease.activity_id,
        token=lease.token if token is None else token,
        instance_id=lease.task.instance_id,
        execution_id=lease.task.execution_id,
        event=TaskCompleted(timestamp=utcnow(), task_scheduled_id=lease.task.task_id, result=result),
    )


async def running(storage: Storage, instance_id: str, **kwargs: object) -> OrchestrationLease:
    """Create an instance and run its first episode (now RUNNING, history = [ExecutionStarted])."""
    await create(storage, instance_id, **kwargs)
    leases = await lease_all(storage)
    lease = leases.pop(instance_id)
    for other in leases.values():
        await storage.abandon_orchestration(other.instance.instance_id, other.token)
    assert await storage.commit_orchestrations([commit_of(lease)]) == [True]
    return lease


def seconds(delta: float) -> timedelta:
    return timedelta(seconds=delta)


async def finished(
    storage: Storage, instance_id: str, status: Status = Status.COMPLETED, **kwargs: object
) -> None:
    """Create an instance whose one episode scheduled an activity and ended it in ``status``."""
    await create(storage, instance_id, **kwargs)
    leases = await lease_all(storage)
    lease = leases.pop(instance_id)
    for other in leases.values():
        await storage.abandon_orchestration(other.instance.instance_id, other.token)
    scheduled = TaskScheduled(timestamp=utcnow(), event_id=0, name="act")
    commit = commit_of(
        lease, status=status, history=[*lease.new_events, scheduled], activities=[activity(instance_id, 0)]
    )
    assert await storage.commit_orchestrations([commit]) == [True]
