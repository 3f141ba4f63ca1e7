"""The replay engine: history events in, orchestrator actions out. Pure: no I/O, no event loop.

An orchestrator is an ``async def`` coroutine or a generator; both are driven by hand with
``send`` / ``throw``. Whenever the code waits on a task, the task travels up to the engine; the
engine resumes the code once a history event completes that task.

One executor lives as long as its instance's execution (the worker caches it between episodes):
``execute(past, new)`` replays ``past`` (``is_replaying`` is true), then applies ``new``, and
returns the episode's actions. A cached executor is called with ``past=[]`` and only the next new
events; it must produce exactly what a fresh executor replaying the whole history produces.
"""

from __future__ import annotations

import contextlib
import inspect
import traceback
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from ..errors import NonDeterminismError, SerializationError, TaskFailedError
from ..history import (
    CompleteOrchestration,
    ContinueAsNew,
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
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from ..models import OrchestrationRuntimeStatus, TaskFailureDetails
from ..serialization import from_json, input_type_of, to_json
from .context import OrchestrationContext
from .determinism import StepRecord, check_replayed_step
from .tasks import Task

Status = OrchestrationRuntimeStatus
OrchestratorRun = Coroutine[Any, Any, Any] | Generator[Any, Any, Any]


class EpisodeResult(msgspec.Struct):
    """What one episode produced."""

    actions: list[OrchestratorAction]
    custom_status: str | None  # JSON text of the last set_custom_status value
    is_complete: bool  # a CompleteOrchestration action is among ``actions``


@dataclass
class _Completion:
    """How the execution ended; turned into a CompleteOrchestration action at the episode's end."""

    step_id: int
    status: OrchestrationRuntimeStatus
    result: str | None = None
    failure: TaskFailureDetails | None = None
    save_events: bool = False
    emitted: bool = False  # handed out in an episode, or found already recorded in history
    carryover: list[HistoryEvent] = field(default_factory=list)


class OrchestrationExecutor:
    """Replays one orchestration execution and produces the actions of each new episode."""

    def __init__(self, fn: Callable[..., Any], *, instance_id: str) -> None:
        self._fn = fn
        self._ctx = OrchestrationContext(instance_id)
        self.history_length = 0  # history events accounted for: past + new + actions, episode after episode
        self._started = False
        self._run: OrchestratorRun | None = None
        self._awaited: Task[Any] | None = None
        self._suspended = False
        self._held_while_suspended: list[HistoryEvent] = []
        self._completion: _Completion | None = None
        self._diverged = False

    def execute(self, past: Sequence[HistoryEvent], new: Sequence[HistoryEvent]) -> EpisodeResult:
        for event in past:
            self._apply(event, replaying=True)
        for event in new:
            self._apply(event, replaying=False)
        actions = self._take_actions()
        self.history_length += len(past) + len(new) + len(actions)
        return EpisodeResult(
            actions=actions,
            custom_status=self._ctx._custom_status,
            is_complete=any(isinstance(action, CompleteOrchestration) for action in actions),
        )

    # --- events -----------------------------------------------------------------------------

    def _apply(self, event: HistoryEvent, *, replaying: bool) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is None:
            return
        if self._completion is not None and handler.kind != "record":
            # The run is over: inputs change nothing, but events raised after continue-as-new carry over.
            if self._completion.save_events and isinstance(event, EventRaised):
                self._completion.carryover.append(event)
            return
        if handler.kind == "input" and self._suspended:
            self._held_while_suspended.append(event)
            return
        self._ctx._is_replaying = replaying
        try:
            handler.apply(self, event)
        except NonDeterminismError as exc:
            # Replay shows the code diverged from history, even if it then ended: that is the verdict.
            self._diverged = True
            self._fail(exc, overriding=True)
            return
        self._resume_if_ready()

    def _on_orchestrator_started(self, event: OrchestratorStarted) -> None:
        self._ctx._advance_clock(event.timestamp)

    def _on_execution_started(self, event: ExecutionStarted) -> None:
        if self._started:
            return  # a duplicate start changes nothing
        self._started = True
        if not self._ctx._clock_started:
            self._ctx._advance_clock(event.timestamp)
        try:
            outcome = self._fn(self._ctx, from_json(event.input, input_type_of(self._fn)))
        except Exception as exc:  # noqa: BLE001 - any error of the orchestrator's code fails the instance
            self._fail(exc)
            return
        if inspect.iscoroutine(outcome) or inspect.isgenerator(outcome):
            self._run = outcome
            self._advance(None, None)
        else:
            self._finish(outcome)

    def _on_task_completed(self, event: TaskCompleted) -> None:
        self._ctx._step_succeeded(event.task_scheduled_id, "activity", event.result)

    def _on_task_failed(self, event: TaskFailed) -> None:
        self._ctx._step_failed(event.task_scheduled_id, "activity", event.failure)

    def _on_sub_orchestration_completed(self, event: SubOrchestrationInstanceCompleted) -> None:
        self._ctx._step_succeeded(event.task_scheduled_id, "sub-orchestration", event.result)

    def _on_sub_orchestration_failed(self, event: SubOrchestrationInstanceFailed) -> None:
        self._ctx._step_failed(event.task_scheduled_id, "sub-orchestration", event.failure)

    def _on_timer_fired(self, event: TimerFired) -> None:
        self._ctx._timer_fired(event.timer_id, event.fire_at)

    def _on_event_raised(self, event: EventRaised) -> None:
        self._ctx._event_raised(event)

    def _on_step_recorded(self, event: StepRecord) -> None:
        if self._diverged or (self._completion is not None and self._completion.emitted):
            return  # the first divergence is the one to report; nothing to check past a recorded end
        check_replayed_step(event, self._ctx._pending_actions.pop(event.event_id, None))

    def _on_execution_completed(self, event: ExecutionCompleted) -> None:
        if self._completion is not None:
            self._completion.emitted = True  # already in history: never hand it out again

    def _on_terminated(self, event: ExecutionTerminated) -> None:
        self._end(Status.TERMINATED, result=event.input, drop_pending_actions=True)

    def _on_suspended(self, event: ExecutionSuspended) -> None:
        self._suspended = True

    def _on_resumed(self, event: ExecutionResumed) -> None:
        self._suspended = False
        held, self._held_while_suspended = self._held_while_suspended, []
        for held_event in held:
            self._apply(held_event, replaying=self._ctx._is_replaying)

    def _ignore(self, event: HistoryEvent) -> None:
        pass

    # --- driving the orchestrator code ------------------------------------------------------

    def _resume_if_ready(self) -> None:
        task = self._awaited
        if task is None or not task.is_complete or self._completion is not None:
            return
        self._awaited = None
        self._advance(*_outcome_of(task))

    def _advance(self, value: Any, error: Exception | None) -> None:
        """Run the code until it waits on a pending task or ends."""
        run = self._run
        assert run is not None
        while True:
            try:
                yielded = run.send(value) if error is None else run.throw(error)
            except StopIteration as stop:
                self._run = None
                self._finish(stop.value)
                return
            except Exception as exc:  # noqa: BLE001 - any error of the orchestrator's code fails the instance
                self._run = None
                self._fail(exc)
                return
            if self._ctx._continue_as_new is not None:
                self._finish(None)  # what the code waits on no longer matters: this run is over
                return
            if not isinstance(yielded, Task):
                value, error = (
                    None,
                    TypeError(
                        f"orchestrators can only await or yield duratask tasks, got {type(yielded).__name__}"
                    ),
                )
                continue
            if not yielded.is_complete:
                self._awaited = yielded
                return
            value, error = _outcome_of(yielded)

    def _finish(self, returned: Any) -> None:
        request = self._ctx._continue_as_new
        if request is not None:
            self._end(Status.CONTINUED_AS_NEW, result=request.input, save_events=request.save_events)
            return
        try:
            result = to_json(returned)
        except SerializationError as exc:
            self._fail(exc)
            return
        self._end(Status.COMPLETED, result=result)

    def _fail(self, exc: Exception, *, overriding: bool = False) -> None:
        if overriding and self._completion is not None and not self._completion.emitted:
            self._completion = None
        self._end(Status.FAILED, failure=failure_details_of(exc), drop_pending_actions=True)

    def _end(
        self,
        status: OrchestrationRuntimeStatus,
        *,
        result: str | None = None,
        failure: TaskFailureDetails | None = None,
        save_events: bool = False,
        drop_pending_actions: bool = False,
    ) -> None:
        if self._completion is not None:
            return
        if drop_pending_actions:
            # Work asked for by a run that failed or was terminated would only be wasted.
            self._ctx._pending_actions.clear()
        self._completion = _Completion(self._ctx._next_step_id(), status, result, failure, save_events)
        self._awaited = None
        run, self._run = self._run, None
        if run is not None:
            # close() runs the code's finally blocks; one that misbehaves cannot change the outcome.
            with contextlib.suppress(Exception):
                run.close()

    def _take_actions(self) -> list[OrchestratorAction]:
        actions: list[OrchestratorAction] = list(self._ctx._pending_actions.values())
        # Handed out now, the backend records them with event_id == action.id: no later check needed.
        self._ctx._pending_actions.clear()
        completion = self._completion
        if completion is not None and not completion.emitted:
            completion.emitted = True
            carryover: list[HistoryEvent] = []
            if completion.save_events:
                carryover = [*self._ctx._unclaimed_events, *completion.carryover]
            actions.append(
                CompleteOrchestration(
                    id=completion.step_id,
                    status=completion.status,
                    result=completion.result,
                    failure=completion.failure,
                    carryover_events=carryover,
                )
            )
        return actions


def _outcome_of(task: Task[Any]) -> tuple[Any, Exception | None]:
    exception = task.get_exception()
    return (None, exception) if exception is not None else (task.get_result(), None)


def failure_details_of(exc: BaseException) -> TaskFailureDetails:
    """The failure record of an exception: qualified type name, message and stack trace."""
    kind = type(exc)
    qualified = (
        kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    )
    return TaskFailureDetails(
        error_type=qualified,
        error_message=str(exc),
        stack_trace="".join(traceback.format_exception(exc)),
        inner_failure=exc.details if isinstance(exc, TaskFailedError) else None,
    )


@dataclass(frozen=True)
class _Handler:
    """How one event kind is applied.

    ``input``: delivers something to the code; held while suspended, ignored once the run ended.
    ``record``: history's record of our own action; checked on replay, never held.
    ``control``: the clock and the instance's lifecycle; applied at once.
    """

    apply: Callable[[OrchestrationExecutor, Any], None]
    kind: Literal["input", "record", "control"]


_Executor = OrchestrationExecutor

_HANDLERS: dict[type[Any], _Handler] = {
    OrchestratorStarted: _Handler(_Executor._on_orchestrator_started, "control"),
    OrchestratorCompleted: _Handler(_Executor._ignore, "control"),
    ExecutionStarted: _Handler(_Executor._on_execution_started, "input"),
    ExecutionCompleted: _Handler(_Executor._on_execution_completed, "record"),
    ExecutionTerminated: _Handler(_Executor._on_terminated, "control"),
    ExecutionSuspended: _Handler(_Executor._on_suspended, "control"),
    ExecutionResumed: _Handler(_Executor._on_resumed, "control"),
    ExecutionRewound: _Handler(_Executor._ignore, "control"),
    ContinueAsNew: _Handler(_Executor._ignore, "control"),
    TaskScheduled: _Handler(_Executor._on_step_recorded, "record"),
    TimerCreated: _Handler(_Executor._on_step_recorded, "record"),
    SubOrchestrationInstanceCreated: _Handler(_Executor._on_step_recorded, "record"),
    EventSent: _Handler(_Executor._on_step_recorded, "record"),
    TaskCompleted: _Handler(_Executor._on_task_completed, "input"),
    TaskFailed: _Handler(_Executor._on_task_failed, "input"),
    SubOrchestrationInstanceCompleted: _Handler(_Executor._on_sub_orchestration_completed, "input"),
    SubOrchestrationInstanceFailed: _Handler(_Executor._on_sub_orchestration_failed, "input"),
    TimerFired: _Handler(_Executor._on_timer_fired, "input"),
    EventRaised: _Handler(_Executor._on_event_raised, "input"),
}
