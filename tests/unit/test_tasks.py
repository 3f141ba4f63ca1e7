"""Tasks, their combinators and retry policies, on their own (no replay engine)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from duratask.orchestration import CompletableTask, RetryPolicy, Task, when_all, when_any


def drive_await(task: Task[Any]) -> tuple[list[Any], Any]:
    """Run ``task.__await__`` like the engine does: collect what it yields, send results back."""
    awaiting = task.__await__()
    yielded: list[Any] = []
    try:
        yielded.append(next(awaiting))
        awaiting.send("sent-back")
    except StopIteration as stop:
        return yielded, stop.value
    raise AssertionError("the await protocol yielded more than once")


def test_awaiting_a_pending_task_yields_the_task_itself_and_returns_what_is_sent_back() -> None:
    task: CompletableTask[str] = CompletableTask()
    yielded, returned = drive_await(task)
    assert yielded == [task]
    assert returned == "sent-back"


def test_awaiting_a_completed_task_returns_its_result_without_yielding() -> None:
    task: CompletableTask[int] = CompletableTask()
    task.complete(7)
    assert drive_await(task) == ([], 7)


def test_awaiting_a_failed_task_raises_its_exception_without_yielding() -> None:
    task: CompletableTask[int] = CompletableTask()
    task.fail(KeyError("gone"))
    with pytest.raises(KeyError, match="gone"):
        drive_await(task)


def test_task_state_and_results() -> None:
    task: CompletableTask[int] = CompletableTask()
    assert (task.is_complete, task.is_failed, task.get_exception()) == (False, False, None)
    with pytest.raises(RuntimeError, match="not complete"):
        task.get_result()
    task.complete(3)
    assert (task.is_complete, task.is_failed, task.get_result()) == (True, False, 3)
    assert "complete" in repr(task)


def test_a_task_completes_only_once() -> None:
    task: CompletableTask[int] = CompletableTask()
    task.fail(ValueError("x"))
    assert task.is_failed
    with pytest.raises(RuntimeError, match="already complete"):
        task.complete(1)
    with pytest.raises(ValueError, match="x"):
        task.get_result()


def test_when_all_gives_results_in_task_order_whatever_the_completion_order() -> None:
    tasks: list[CompletableTask[str]] = [CompletableTask() for _ in range(3)]
    combined = when_all(tasks)
    tasks[2].complete("c")
    tasks[0].complete("a")
    assert not combined.is_complete
    tasks[1].complete("b")
    assert combined.get_result() == ["a", "b", "c"]


def test_when_all_fails_with_the_first_failure_without_waiting_for_the_rest() -> None:
    tasks: list[CompletableTask[str]] = [CompletableTask() for _ in range(3)]
    combined = when_all(tasks)
    tasks[1].fail(ValueError("first"))
    assert combined.is_failed
    tasks[0].fail(ValueError("second"))  # later outcomes change nothing
    tasks[2].complete("c")
    assert str(combined.get_exception()) == "first"


def test_when_all_of_nothing_and_of_already_completed_tasks_is_complete_at_once() -> None:
    assert when_all([]).get_result() == []
    done: CompletableTask[int] = CompletableTask()
    done.complete(1)
    assert when_all([done, done]).get_result() == [1, 1]


def test_when_any_gives_the_first_task_to_finish_even_a_failed_one() -> None:
    first: CompletableTask[str] = CompletableTask()
    second: CompletableTask[str] = CompletableTask()
    race = when_any([first, second])
    second.fail(ValueError("lost"))
    first.complete("late")
    assert race.get_result() is second


def test_when_any_with_an_already_completed_task_picks_the_first_in_list_order() -> None:
    pending: CompletableTask[int] = CompletableTask()
    done_a: CompletableTask[int] = CompletableTask()
    done_b: CompletableTask[int] = CompletableTask()
    done_b.complete(2)
    done_a.complete(1)
    assert when_any([pending, done_a, done_b]).get_result() is done_a


def test_combinators_reject_nothing_and_non_tasks() -> None:
    with pytest.raises(ValueError, match="at least one"):
        when_any([])
    with pytest.raises(TypeError, match="duratask tasks"):
        when_all([CompletableTask(), "not a task"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="duratask tasks"):
        when_any([None])  # type: ignore[list-item]


def test_combinators_nest() -> None:
    a: CompletableTask[int] = CompletableTask()
    b: CompletableTask[int] = CompletableTask()
    timeout: CompletableTask[None] = CompletableTask()
    both = when_all([a, b])
    race = when_any([both, timeout])
    a.complete(1)
    b.complete(2)
    assert race.get_result() is both
    assert both.get_result() == [1, 2]


SECOND = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first_retry_interval": timedelta(0), "max_number_of_attempts": 3}, "first_retry_interval"),
        ({"first_retry_interval": -SECOND, "max_number_of_attempts": 3}, "first_retry_interval"),
        ({"first_retry_interval": 5, "max_number_of_attempts": 3}, "first_retry_interval"),
        ({"first_retry_interval": SECOND, "max_number_of_attempts": 0}, "max_number_of_attempts"),
        ({"first_retry_interval": SECOND, "max_number_of_attempts": 2.5}, "max_number_of_attempts"),
        ({"first_retry_interval": SECOND, "max_number_of_attempts": True}, "max_number_of_attempts"),
        (
            {"first_retry_interval": SECOND, "max_number_of_attempts": 3, "backoff_coefficient": 0.5},
            "backoff",
        ),
        (
            {
                "first_retry_interval": SECOND,
                "max_number_of_attempts": 3,
                "backoff_coefficient": float("inf"),
            },
            "backoff",
        ),
        (
            {"first_retry_interval": SECOND, "max_number_of_attempts": 3, "backoff_coefficient": "2"},
            "backoff",
        ),
        (
            {"first_retry_interval": SECOND, "max_number_of_attempts": 3, "max_retry_interval": timedelta(0)},
            "max_retry_interval",
        ),
        (
            {"first_retry_interval": SECOND, "max_number_of_attempts": 3, "retry_timeout": -SECOND},
            "retry_timeout",
        ),
    ],
)
def test_retry_policy_rejects_bad_values_clearly(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


def test_retry_policy_delays_back_off_and_are_capped() -> None:
    policy = RetryPolicy(
        first_retry_interval=timedelta(seconds=2),
        max_number_of_attempts=10,
        backoff_coefficient=3,
        max_retry_interval=timedelta(seconds=30),
    )
    delays = [policy.delay_after_attempt(n).total_seconds() for n in range(1, 6)]
    assert delays == [2, 6, 18, 30, 30]


def test_retry_policy_defaults_to_a_constant_delay_and_survives_huge_exponents() -> None:
    constant = RetryPolicy(first_retry_interval=timedelta(seconds=4), max_number_of_attempts=5)
    assert {constant.delay_after_attempt(n) for n in range(1, 5)} == {timedelta(seconds=4)}
    steep = RetryPolicy(first_retry_interval=SECOND, max_number_of_attempts=5000, backoff_coefficient=10)
    assert steep.delay_after_attempt(4000) >= timedelta(days=365)  # no OverflowError
