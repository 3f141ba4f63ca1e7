"""Rewind: give a FAILED instance a fresh execution whose history forgets what failed.

The semantics are those of the official SDKs' rewind (durabletask-python 1.12, the Durable Task
Scheduler): failed activity and sub-orchestration results are removed from the history and the
orchestration replays from what succeeded, so only the failed work runs again.

- ``TaskFailed`` events go, and with them the ``TaskScheduled`` they answer: replay then asks for
  that activity again and the backend queues it anew (same task id).
- ``SubOrchestrationInstanceFailed`` events go, ``SubOrchestrationInstanceCreated`` stays: the
  failed child is rewound too (recursively) and reports its new result to the same task id.
- ``ExecutionCompleted`` goes; ``ExecutionStarted`` gets a fresh execution id, so workers never
  mistake the rewound execution for a cached one.
- An ``ExecutionRewound`` message wakes the instance: the next episode replays the clean history.

Known limit, shared with the official SDKs: an activity called with a retry policy leaves retry
timers in the history; rewinding it may replay non-deterministically.

Pure: no I/O. ``LocalBackend.rewind`` queues the request, the lease path calls ``plan_rewind``.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from .. import history as h
from ..models import OrchestrationRuntimeStatus as Status
from ..storage.base import InboxMessage, InstanceRecord, OrchestrationCommit
from . import runtime_state

_FORGOTTEN = (h.TaskFailed, h.SubOrchestrationInstanceFailed, h.ExecutionCompleted)


def clean_history(history: list[h.HistoryEvent], execution_id: str) -> list[h.HistoryEvent]:
    """``history`` without failed results (and the scheduling of failed activities), not completed."""
    failed_tasks = {e.task_scheduled_id for e in history if isinstance(e, h.TaskFailed)}
    clean: list[h.HistoryEvent] = []
    for event in history:
        if isinstance(event, _FORGOTTEN):
            continue
        if isinstance(event, h.TaskScheduled) and event.event_id in failed_tasks:
            continue
        if isinstance(event, h.ExecutionStarted):
            event = msgspec.structs.replace(event, execution_id=execution_id)
        clean.append(event)
    return clean


def failed_children(history: list[h.HistoryEvent]) -> list[str]:
    """Instance ids of the sub-orchestrations whose failure the history records."""
    failed = {e.task_scheduled_id for e in history if isinstance(e, h.SubOrchestrationInstanceFailed)}
    return [
        e.instance_id
        for e in history
        if isinstance(e, h.SubOrchestrationInstanceCreated) and e.event_id in failed
    ]


def plan_rewind(
    instance: InstanceRecord,
    token: str,
    history: list[h.HistoryEvent],
    request: h.ExecutionRewound,
    now: datetime,
) -> OrchestrationCommit:
    """The commit that rewinds ``instance`` (FAILED, leased under ``token``) whose history is ``history``.

    ``instance`` is modified in place and becomes the commit's instance row.
    """
    instance.execution_id = runtime_state.new_execution_id()
    instance.status = Status.RUNNING
    instance.output = None
    instance.failure = None
    instance.completed_at = None
    instance.last_updated_at = now
    wake = h.ExecutionRewound(timestamp=now, reason=request.reason)
    messages = [InboxMessage(instance_id=instance.instance_id, event=wake, visible_at=now)]
    messages += [
        InboxMessage(instance_id=child, event=wake, visible_at=now) for child in failed_children(history)
    ]
    return OrchestrationCommit(
        token=token,
        instance=instance,
        history_append=clean_history(history, instance.execution_id),
        reset_history=True,
        messages=messages,
    )


def is_rewind_request(
    instance: InstanceRecord, new_events: list[h.HistoryEvent]
) -> h.ExecutionRewound | None:
    """The rewind request among a FAILED instance's new events, if any."""
    if instance.status is not Status.FAILED:
        return None
    return next((e for e in new_events if isinstance(e, h.ExecutionRewound)), None)
