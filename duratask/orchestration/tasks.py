"""Tasks: the durable steps an orchestrator waits on, their combinators, and retry policies.

A ``Task`` is awaitable (``await task`` in ``async def`` orchestrators) and yieldable (``yield task``
in generator orchestrators). Either way the task object itself travels up to the replay engine,
which resumes the orchestrator once history says the task is done. Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")

# A fence against overflow only: timedelta and datetime arithmetic fail beyond a few thousand years.
_LONGEST_RETRY_DELAY = timedelta(days=36500)


class Task(Generic[T]):
    """The eventual outcome of a durable step: a result of type ``T``, or an exception."""

    def __init__(self) -> None:
        self._is_complete = False
        self._result: T | None = None
        self._exception: Exception | None = None
        self._done_callbacks: list[Callable[[Task[T]], None]] = []

    @property
    def is_complete(self) -> bool:
        """True once the task has a result or has failed."""
        return self._is_complete

    @property
    def is_failed(self) -> bool:
        """True if the task completed with an exception."""
        return self._exception is not None

    def get_result(self) -> T:
        """The result; raises the task's exception if it failed, ``RuntimeError`` if still pending."""
        if not self._is_complete:
            raise RuntimeError("the task is not complete yet")
        if self._exception is not None:
            raise self._exception
        return cast(T, self._result)

    def get_exception(self) -> Exception | None:
        """The exception the task failed with, if any."""
        return self._exception

    def __await__(self) -> Generator[Task[T], Any, T]:
        if self._is_complete:
            return self.get_result()
        # The engine sends the result back (or throws the failure in) once history completes us.
        result: T = yield self
        return result

    def __repr__(self) -> str:
        state = "failed" if self.is_failed else "complete" if self._is_complete else "pending"
        return f"<{type(self).__name__} {state}>"

    # --- used by the engine and by composite tasks ------------------------------------------

    def _resolve(self, result: T | None, exception: Exception | None) -> None:
        if self._is_complete:
            raise RuntimeError(f"{self!r} is already complete")
        self._is_complete = True
        self._result = result
        self._exception = exception
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            callback(self)

    def _add_done_callback(self, callback: Callable[[Task[T]], None]) -> None:
        """Call ``callback(self)`` once complete (at once if already complete)."""
        if self._is_complete:
            callback(self)
        else:
            self._done_callbacks.append(callback)


class CompletableTask(Task[T]):
    """A task completed from outside: by the replay engine when history delivers its outcome."""

    def complete(self, result: T) -> None:
        self._resolve(result, None)

    def fail(self, exception: Exception) -> None:
        self._resolve(None, exception)


class WhenAllTask(Task[list[Any]]):
    """Completes with every child's result, in order; fails as soon as one child fails."""

    def __init__(self, children: list[Task[Any]]) -> None:
        super().__init__()
        self._children = children
        self._pending = len(children)
        if not children:
            self._resolve([], None)
        for child in children:
            child._add_done_callback(self._on_child_done)

    def _on_child_done(self, child: Task[Any]) -> None:
        self._pending -= 1
        if self._is_complete:
            return
        exception = child.get_exception()
        if exception is not None:
            self._resolve(None, exception)
        elif self._pending == 0:
            self._resolve([c.get_result() for c in self._children], None)


class WhenAnyTask(Task[Task[Any]]):
    """Completes with the first child to complete (successfully or not): the child task itself."""

    def __init__(self, children: list[Task[Any]]) -> None:
        super().__init__()
        if not children:
            raise ValueError("when_any needs at least one task")
        for child in children:
            child._add_done_callback(self._on_child_done)

    def _on_child_done(self, child: Task[Any]) -> None:
        if not self._is_complete:
            self._resolve(child, None)


def when_all(tasks: Iterable[Task[T]]) -> Task[list[T]]:
    """A task whose result is the list of the tasks' results, in order.

    It fails with the first failure among the tasks, without waiting for the others.
    """
    return cast(Task[list[T]], WhenAllTask(_as_task_list(tasks, "when_all")))


def when_any(tasks: Iterable[Task[Any]]) -> Task[Task[Any]]:
    """A task whose result is the first of ``tasks`` to complete (the ``Task`` object itself).

    The winner may have failed: its ``get_result()`` then raises. An empty ``tasks`` is a ``ValueError``.
    """
    return WhenAnyTask(_as_task_list(tasks, "when_any"))


def _as_task_list(tasks: Iterable[Task[Any]], caller: str) -> list[Task[Any]]:
    children = list(tasks)
    for child in children:
        if not isinstance(child, Task):
            raise TypeError(f"{caller} takes duratask tasks, got {type(child).__name__}")
    return children


@dataclass(frozen=True)
class RetryPolicy:
    """How an activity or sub-orchestration is retried after a failure.

    ``max_number_of_attempts`` counts every attempt, the first included. The delay before attempt
    ``n + 1`` is ``first_retry_interval * backoff_coefficient ** (n - 1)``, capped by
    ``max_retry_interval``. A failure that arrives once ``retry_timeout`` has passed since the first
    attempt was scheduled (orchestration time), or that is marked non-retriable, is not retried.
    Delays are durable timers, so they survive restarts. Invalid fields raise ``ValueError``.
    """

    first_retry_interval: timedelta
    max_number_of_attempts: int
    backoff_coefficient: float = 1.0
    max_retry_interval: timedelta | None = None
    retry_timeout: timedelta | None = None

    def __post_init__(self) -> None:
        _require_positive_timedelta("first_retry_interval", self.first_retry_interval)
        attempts = self.max_number_of_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"max_number_of_attempts must be an integer >= 1, got {attempts!r}")
        coefficient = self.backoff_coefficient
        if (
            isinstance(coefficient, bool)
            or not isinstance(coefficient, (int, float))
            or not math.isfinite(coefficient)
            or coefficient < 1.0
        ):
            raise ValueError(f"backoff_coefficient must be a finite number >= 1.0, got {coefficient!r}")
        if self.max_retry_interval is not None:
            _require_positive_timedelta("max_retry_interval", self.max_retry_interval)
        if self.retry_timeout is not None:
            _require_positive_timedelta("retry_timeout", self.retry_timeout)

    def delay_after_attempt(self, attempt: int) -> timedelta:
        """How long to wait after failed attempt number ``attempt`` (1-based) before the next one."""
        try:
            seconds = self.first_retry_interval.total_seconds() * self.backoff_coefficient ** (attempt - 1)
        except OverflowError:
            seconds = math.inf
        if self.max_retry_interval is not None:
            seconds = min(seconds, self.max_retry_interval.total_seconds())
        return timedelta(seconds=min(seconds, _LONGEST_RETRY_DELAY.total_seconds()))


def _require_positive_timedelta(field: str, value: object) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ValueError(f"{field} must be a positive timedelta, got {value!r}")
