"""``OrchestrationContext``: what orchestrator code can do, all of it deterministic and replayable.

Every durable step takes the next sequence number (0, 1, 2, ... in execution order) and becomes a
pending action; the replay engine (``executor.py``) checks it against history on replay, emits it
otherwise, and completes the step's task when history delivers the outcome. The context does no I/O.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from ..errors import SerializationError, TaskFailedError
from ..history import (
    CreateSubOrchestration,
    CreateTimer,
    EventRaised,
    OrchestratorAction,
    ScheduleTask,
    SendEvent,
)
from ..models import TaskFailureDetails
from ..serialization import from_json, result_type_of, to_json
from .tasks import CompletableTask, RetryPolicy, Task

T = TypeVar("T")

StepKind = Literal["activity", "sub-orchestration", "timer"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# new_uuid() values are name-based (uuid5) in this namespace, so replay produces the same ones.
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:duratask:orchestration:new_uuid")


@dataclass
class _Retry:
    policy: RetryPolicy
    first_scheduled_at: datetime
    attempt: int = 1


@dataclass
class _Step:
    """A step in flight: the task to complete, and how to (re)create its action."""

    task: CompletableTask[Any]
    kind: StepKind
    name: str
    result_type: Any
    make_action: Callable[[int], OrchestratorAction]
    retry: _Retry | None = None


@dataclass(frozen=True)
class ContinueAsNewRequest:
    input: str | None
    save_events: bool


class OrchestrationContext:
    """Handed to orchestrator functions as their first argument."""

    def __init__(self, instance_id: str) -> None:
        self._instance_id = instance_id
        self._now = _EPOCH
        self._clock_started = False
        self._is_replaying = False
        self._sequence = 0
        self._uuid_counter = 0
        self._custom_status: str | None = None
        # Actions taken but not yet confirmed by history (replay) nor handed out (new episode).
        self._pending_actions: dict[int, OrchestratorAction] = {}
        self._open_steps: dict[int, _Step] = {}
        self._event_waiters: dict[str, deque[CompletableTask[Any]]] = {}
        # External events that arrived before anyone waited for them, in arrival order.
        self._unclaimed_events: list[EventRaised] = []
        self._continue_as_new: ContinueAsNewRequest | None = None

    # --- the public surface -----------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        """The id of the instance this orchestrator runs for."""
        return self._instance_id

    @property
    def current_utc_datetime(self) -> datetime:
        """The time of the current episode (its OrchestratorStarted event): stable across replays."""
        return self._now

    @property
    def is_replaying(self) -> bool:
        """True while the code re-runs steps already recorded in history (e.g. to skip logging)."""
        return self._is_replaying

    def call_activity(
        self,
        fn_or_name: Callable[..., Any] | str,
        input: Any = None,
        *,
        retry_policy: RetryPolicy | None = None,
    ) -> Task[Any]:
        """Schedule an activity; the task's result is decoded with the function's return annotation."""
        name = name_of(fn_or_name)
        encoded_input = to_json(input)

        def schedule(step_id: int) -> OrchestratorAction:
            return ScheduleTask(id=step_id, name=name, input=encoded_input)

        return self._start_step("activity", name, result_type_of(fn_or_name), schedule, retry_policy)

    def call_sub_orchestrator(
        self,
        fn_or_name: Callable[..., Any] | str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> Task[Any]:
        """Start a child orchestration; the task's result is its output.

        The output is decoded with the function's return annotation. By default the child's id is
        ours, ``:`` and the step number in four hex digits (the same on every replay).
        """
        name = name_of(fn_or_name)
        encoded_input = to_json(input)

        def create(step_id: int) -> OrchestratorAction:
            child_id = instance_id if instance_id is not None else f"{self._instance_id}:{step_id:04x}"
            return CreateSubOrchestration(id=step_id, instance_id=child_id, name=name, input=encoded_input)

        return self._start_step("sub-orchestration", name, result_type_of(fn_or_name), create, retry_policy)

    def create_timer(self, fire_at: datetime | timedelta) -> Task[None]:
        """A durable timer firing at ``fire_at`` (naive datetimes are UTC) or after a delay."""
        if isinstance(fire_at, timedelta):
            when = self._now + fire_at
        elif isinstance(fire_at, datetime):
            when = as_utc(fire_at)
        else:
            raise TypeError(f"create_timer takes a datetime or a timedelta, got {type(fire_at).__name__}")
        return self._start_step(
            "timer", "", None, lambda step_id: CreateTimer(id=step_id, fire_at=when), None
        )

    def wait_for_external_event(self, name: str) -> Task[Any]:
        """A task completed by the next event of this name (case-insensitive; first come first served).

        Events that arrived before anyone waited are kept in order. The result is plain JSON.
        """
        key = name.casefold()
        task: CompletableTask[Any] = CompletableTask()
        for index, event in enumerate(self._unclaimed_events):
            if event.name.casefold() == key:
                del self._unclaimed_events[index]
                _complete_with_json(task, event.input, Any)
                return task
        self._event_waiters.setdefault(key, deque()).append(task)
        return task

    def continue_as_new(self, input: Any, *, save_events: bool = False) -> None:
        """Restart this instance with a fresh history and ``input``, once the code returns or waits.

        With ``save_events``, external events nobody has waited for yet are handed to the new run.
        """
        self._continue_as_new = ContinueAsNewRequest(to_json(input), save_events)

    def set_custom_status(self, value: Any) -> None:
        """Attach a JSON-serializable value to the instance, visible to clients; saved with each episode."""
        self._custom_status = to_json(value)

    def new_uuid(self) -> uuid.UUID:
        """A UUID that is the same on every replay of this step."""
        name = f"{self._instance_id}_{self._now.isoformat()}_{self._uuid_counter}"
        self._uuid_counter += 1
        return uuid.uuid5(_UUID_NAMESPACE, name)

    def send_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Raise event ``name`` on another instance (fire and forget)."""
        step_id = self._next_step_id()
        self._pending_actions[step_id] = SendEvent(
            id=step_id, instance_id=instance_id, name=name, data=to_json(data)
        )

    # --- steps ------------------------------------------------------------------------------

    def _next_step_id(self) -> int:
        step_id = self._sequence
        self._sequence += 1
        return step_id

    def _start_step(
        self,
        kind: StepKind,
        name: str,
        result_type: Any,
        make_action: Callable[[int], OrchestratorAction],
        retry_policy: RetryPolicy | None,
    ) -> Task[Any]:
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a RetryPolicy, got {type(retry_policy).__name__}")
        retry = _Retry(retry_policy, self._now) if retry_policy is not None else None
        step = _Step(CompletableTask(), kind, name, result_type, make_action, retry)
        self._schedule(step)
        return step.task

    def _schedule(self, step: _Step) -> None:
        step_id = self._next_step_id()
        self._pending_actions[step_id] = step.make_action(step_id)
        self._open_steps[step_id] = step

    # --- outcomes, as the engine reads them from history ------------------------------------

    def _step_succeeded(self, step_id: int, kind: StepKind, result: str | None) -> None:
        step = self._take_open_step(step_id, kind)
        if step is not None:
            _complete_with_json(step.task, result, step.result_type)

    def _timer_fired(self, timer_id: int, fire_at: datetime) -> None:
        """A timer fired; one with the id but not the time of ours is a leftover of an earlier
        execution (continue-as-new) and must not wake the new one."""
        step = self._open_steps.get(timer_id)
        if step is None or step.kind != "timer":
            return
        action = step.make_action(timer_id)
        if isinstance(action, CreateTimer) and as_utc(action.fire_at) != as_utc(fire_at):
            return
        self._step_succeeded(timer_id, "timer", None)

    def _step_failed(self, step_id: int, kind: StepKind, failure: TaskFailureDetails) -> None:
        step = self._take_open_step(step_id, kind)
        if step is None or self._retry_later(step, failure):
            return
        message = f"{kind} {step.name!r} failed: {failure.error_type}: {failure.error_message}"
        step.task.fail(TaskFailedError(message, failure))

    def _take_open_step(self, step_id: int, kind: StepKind) -> _Step | None:
        # Unknown ids (a duplicate delivery, or a kind that does not match) are ignored.
        step = self._open_steps.get(step_id)
        if step is None or step.kind != kind:
            return None
        del self._open_steps[step_id]
        return step

    def _retry_later(self, step: _Step, failure: TaskFailureDetails) -> bool:
        """Start a durable backoff timer and schedule the next attempt when it fires, if allowed."""
        retry = step.retry
        if retry is None or failure.is_non_retriable:
            return False
        policy = retry.policy
        if retry.attempt >= policy.max_number_of_attempts:
            return False
        if policy.retry_timeout is not None and self._now - retry.first_scheduled_at >= policy.retry_timeout:
            return False
        fire_at = self._now + policy.delay_after_attempt(retry.attempt)
        retry.attempt += 1
        backoff = _Step(
            CompletableTask(), "timer", "", None, lambda step_id: CreateTimer(id=step_id, fire_at=fire_at)
        )
        backoff.task._add_done_callback(lambda _: self._schedule(step))
        self._schedule(backoff)
        return True

    def _event_raised(self, event: EventRaised) -> None:
        waiters = self._event_waiters.get(event.name.casefold())
        if waiters:
            _complete_with_json(waiters.popleft(), event.input, Any)
        else:
            self._unclaimed_events.append(event)

    def _advance_clock(self, timestamp: datetime) -> None:
        self._now = as_utc(timestamp)
        self._clock_started = True


def _complete_with_json(task: CompletableTask[Any], text: str | None, type_: Any) -> None:
    try:
        value = from_json(text, type_)
    except SerializationError as exc:
        task.fail(exc)
        return
    task.complete(value)


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted to UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def name_of(fn_or_name: Callable[..., Any] | str) -> str:
    """The registered name of an activity or orchestrator: a string, or the function's name."""
    if isinstance(fn_or_name, str):
        if not fn_or_name:
            raise ValueError("the name of an activity or orchestrator cannot be empty")
        return fn_or_name
    if callable(fn_or_name):
        explicit = getattr(fn_or_name, "__duratask_name__", None)
        if isinstance(explicit, str) and explicit:
            return explicit
        name = getattr(fn_or_name, "__name__", None)
        if isinstance(name, str) and name:
            return name
    raise TypeError(f"expected a registered function or a name, got {fn_or_name!r}")
