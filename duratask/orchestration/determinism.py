"""Checking replayed code against history: each recorded step must be what the code does now.

An action the orchestrator takes (schedule an activity, a timer, a sub-orchestration, send an
event) is recorded in history under its sequence number. On replay, the record with that number
must describe the same kind of step with the same name; otherwise the code changed under a running
instance and continuing would attach old results to the wrong steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import NonDeterminismError
from ..history import (
    CompleteOrchestration,
    CreateSubOrchestration,
    CreateTimer,
    EventSent,
    OrchestratorAction,
    ScheduleTask,
    SendEvent,
    SubOrchestrationInstanceCreated,
    TaskScheduled,
    TerminateOrchestration,
    TimerCreated,
)

StepRecord = TaskScheduled | TimerCreated | SubOrchestrationInstanceCreated | EventSent

# (kind, name): what must match between a recorded step and the code's action of the same number.
Step = tuple[str, str]

_RECORD_STEP: dict[type[Any], Callable[[Any], Step]] = {
    TaskScheduled: lambda e: ("call_activity", e.name),
    TimerCreated: lambda e: ("create_timer", ""),
    SubOrchestrationInstanceCreated: lambda e: ("call_sub_orchestrator", e.name),
    EventSent: lambda e: ("send_event", e.name),
}

_ACTION_STEP: dict[type[Any], Callable[[Any], Step]] = {
    ScheduleTask: lambda a: ("call_activity", a.name),
    CreateTimer: lambda a: ("create_timer", ""),
    CreateSubOrchestration: lambda a: ("call_sub_orchestrator", a.name),
    SendEvent: lambda a: ("send_event", a.name),
    CompleteOrchestration: lambda a: ("complete", a.status.name),
    TerminateOrchestration: lambda a: ("terminate", a.instance_id),
}


def record_step(record: StepRecord) -> Step:
    return _RECORD_STEP[type(record)](record)


def action_step(action: OrchestratorAction) -> Step:
    return _ACTION_STEP[type(action)](action)


def describe(step: Step) -> str:
    kind, name = step
    return f"{kind}({name!r})" if name else f"{kind}()"


def check_replayed_step(record: StepRecord, action: OrchestratorAction | None) -> None:
    """Raise ``NonDeterminismError`` unless ``action`` is the step ``record`` describes."""
    expected = record_step(record)
    if action is not None and action_step(action) == expected:
        return
    actual = "nothing" if action is None else describe(action_step(action))
    raise NonDeterminismError(
        f"non-deterministic orchestrator at step {record.event_id}: history records "
        f"{describe(expected)} but the orchestrator code now does {actual} at this step"
    )
