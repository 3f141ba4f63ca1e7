"""What the JSON API answers: instances and history events as plain JSON values (pure functions).

Payloads (inputs, outputs, custom status, event data) stay the JSON *text* the instance stored:
the page pretty-prints it when it parses, and shows it as is when it does not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ..history import HistoryEvent
from ..models import OrchestrationMetadata, OrchestrationRuntimeStatus, TaskFailureDetails

JsonObject = dict[str, Any]


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def failure_view(failure: TaskFailureDetails | None) -> JsonObject | None:
    if failure is None:
        return None
    return {
        "error_type": failure.error_type,
        "error_message": failure.error_message,
        "stack_trace": failure.stack_trace,
        "inner_failure": failure_view(failure.inner_failure),
        "is_non_retriable": failure.is_non_retriable,
    }


def instance_summary(meta: OrchestrationMetadata) -> JsonObject:
    """One row of the instance list: no payloads, so that a page stays small."""
    return {
        "instance_id": meta.instance_id,
        "name": meta.name,
        "runtime_status": meta.runtime_status.name,
        "is_terminal": meta.runtime_status.is_terminal,
        "created_at": iso(meta.created_at),
        "last_updated_at": iso(meta.last_updated_at),
        "parent_instance_id": meta.parent_instance_id,
    }


def instance_detail(meta: OrchestrationMetadata) -> JsonObject:
    """One instance with its payloads and failure."""
    return {
        **instance_summary(meta),
        "serialized_input": meta.serialized_input,
        "serialized_output": meta.serialized_output,
        "serialized_custom_status": meta.serialized_custom_status,
        "failure_details": failure_view(meta.failure_details),
    }


# Fields every event has, shown in their own columns rather than among the details.
_COMMON_FIELDS = ("timestamp", "event_id")


def _detail_value(value: Any) -> Any:
    """Statuses by name rather than by protocol number; everything else as msgspec writes it."""
    if isinstance(value, OrchestrationRuntimeStatus):
        return value.name
    if isinstance(value, TaskFailureDetails):
        return failure_view(value)
    return msgspec.to_builtins(value)


def event_view(event: HistoryEvent, started: datetime | None) -> JsonObject:
    """One timeline row: kind, when (and how long after ``started``), and its fields that are set."""
    details = {
        name: _detail_value(getattr(event, name))
        for name in event.__struct_fields__
        if name not in _COMMON_FIELDS and getattr(event, name) is not None
    }
    offset = None if started is None else (event.timestamp - started).total_seconds() * 1000.0
    return {
        "kind": type(event).__name__,
        "timestamp": iso(event.timestamp),
        "offset_ms": offset,
        "event_id": event.event_id,
        "details": details,
    }


def history_view(events: list[HistoryEvent]) -> list[JsonObject]:
    """The history in its order, each event timed from the earliest one.

    That is not always the first: an episode's ``OrchestratorStarted`` is stamped when the episode
    began, after the ``ExecutionStarted`` or ``TaskCompleted`` it then records.
    """
    started = min((event.timestamp for event in events), default=None)
    return [event_view(event, started) for event in events]
