"""The server's pure rules, without a network: the error table, work-item filters, the check of
orchestrator responses against history, and how rewind cleans a history."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import grpc
import pytest

from duratask import history as h
from duratask.backend import rewind
from duratask.errors import (
    InstanceStateError,
    InvalidInstanceIdError,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    PayloadTooLargeError,
)
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.models import TaskFailureDetails
from duratask.server.errors import RpcError, status_of
from duratask.server.work_items import NameFilter, scheduled_ids, validate_orchestrator_actions
from duratask.storage.base import InstanceRecord

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FAILURE = TaskFailureDetails(error_type="E", error_message="no")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (OrchestrationNotFoundError("x"), grpc.StatusCode.NOT_FOUND),
        (OrchestrationAlreadyExistsError("x"), grpc.StatusCode.ALREADY_EXISTS),
        (InstanceStateError("finished"), grpc.StatusCode.FAILED_PRECONDITION),
        (PayloadTooLargeError("input", 10, 5), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (InvalidInstanceIdError("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (ValueError("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (TimeoutError("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (RpcError(grpc.StatusCode.UNIMPLEMENTED, "no"), grpc.StatusCode.UNIMPLEMENTED),
    ],
)
def test_error_table(error: Exception, code: grpc.StatusCode) -> None:
    status = status_of(error)
    assert status is not None and status.code == code and status.message == str(error)


def test_unexpected_errors_have_no_row() -> None:
    assert status_of(RuntimeError("bug")) is None


def test_payload_errors_name_the_limit() -> None:
    status = status_of(PayloadTooLargeError("orchestration input", 2000, 1000))
    assert status is not None and "1000 bytes" in status.message


def filters(*pairs: tuple[str, list[str]]) -> NameFilter:
    return NameFilter.of(SimpleNamespace(name=name, versions=versions) for name, versions in pairs)


def test_name_filters() -> None:
    f = filters(("a", []), ("b", ["1.0", "2.0"]), ("b", ["3.0"]))
    assert f.accepts("a", None) and f.accepts("a", "9")
    assert f.accepts("b", "3.0") and f.accepts("b", "1.0") and not f.accepts("b", "4.0")
    assert not f.accepts("b", None) and not f.accepts("c", None)
    assert not filters().accepts("a", None)  # filters sent, none of this kind: take none


def test_actions_consistent_with_history_pass() -> None:
    history = [
        h.ExecutionStarted(timestamp=NOW, name="o", instance_id="i", execution_id="e"),
        h.TaskScheduled(timestamp=NOW, event_id=0, name="a"),
        h.TimerCreated(timestamp=NOW, event_id=1, fire_at=NOW),
    ]
    actions: list[h.OrchestratorAction] = [
        h.ScheduleTask(id=2, name="a"),
        h.CreateSubOrchestration(id=3, instance_id="child", name="o"),
        h.SendEvent(id=4, instance_id="other", name="e"),
        h.TerminateOrchestration(id=5, instance_id="other"),
        h.CompleteOrchestration(id=-1, status=Status.CONTINUED_AS_NEW),
    ]
    validate_orchestrator_actions(actions, scheduled_ids(history))


@pytest.mark.parametrize(
    ("actions", "words"),
    [
        ([h.ScheduleTask(id=0, name="a")], "the same task again"),
        ([h.CreateTimer(id=0, fire_at=NOW)], "TaskScheduled there"),
        ([h.ScheduleTask(id=7, name="a"), h.CreateTimer(id=7, fire_at=NOW)], "two actions"),
        ([h.ScheduleTask(id=7, name="")], "names no task"),
        ([h.TerminateOrchestration(id=7, instance_id="")], "no target instance"),
        ([h.SendEvent(id=7, instance_id="x", name="")], "names no event"),
        ([h.CompleteOrchestration(id=7, status=Status.PENDING)], "does not end"),
    ],
)
def test_actions_that_contradict_history_are_refused(actions: list[h.OrchestratorAction], words: str) -> None:
    history = [h.TaskScheduled(timestamp=NOW, event_id=0, name="a")]
    with pytest.raises(RpcError) as refused:
        validate_orchestrator_actions(actions, scheduled_ids(history))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in refused.value.message


def test_a_failed_task_may_be_scheduled_again_under_its_id() -> None:
    """Retry policies of the official SDKs reuse the first attempt's id."""
    history = [
        h.TaskScheduled(timestamp=NOW, event_id=1, name="a"),
        h.TaskFailed(timestamp=NOW, task_scheduled_id=1, failure=FAILURE),
        h.SubOrchestrationInstanceCreated(timestamp=NOW, event_id=2, instance_id="c", name="o"),
        h.SubOrchestrationInstanceFailed(timestamp=NOW, task_scheduled_id=2, failure=FAILURE),
        h.TimerCreated(timestamp=NOW, event_id=3, fire_at=NOW),
        h.TaskScheduled(timestamp=NOW, event_id=4, name="b"),
        h.TaskCompleted(timestamp=NOW, task_scheduled_id=4, result="1"),
    ]
    scheduled = scheduled_ids(history)
    validate_orchestrator_actions([h.ScheduleTask(id=1, name="a")], scheduled)
    validate_orchestrator_actions([h.CreateSubOrchestration(id=2, instance_id="c", name="o")], scheduled)
    for not_a_retry in (
        h.CreateTimer(id=1, fire_at=NOW),
        h.ScheduleTask(id=4, name="b"),
        h.CreateTimer(id=3, fire_at=NOW),
    ):
        with pytest.raises(RpcError):
            validate_orchestrator_actions([not_a_retry], scheduled)
    # Scheduled again, the id is open again: a second action for it is a contradiction.
    again = scheduled_ids([*history, h.TaskScheduled(timestamp=NOW, event_id=1, name="a")])
    with pytest.raises(RpcError):
        validate_orchestrator_actions([h.ScheduleTask(id=1, name="a")], again)


# --- rewind --------------------------------------------------------------------------------------

FAILED_HISTORY: list[h.HistoryEvent] = [
    h.OrchestratorStarted(timestamp=NOW),
    h.ExecutionStarted(timestamp=NOW, name="o", instance_id="i", execution_id="old"),
    h.TaskScheduled(timestamp=NOW, event_id=0, name="good"),
    h.TaskCompleted(timestamp=NOW, task_scheduled_id=0, result="1"),
    h.TaskScheduled(timestamp=NOW, event_id=1, name="bad"),
    h.SubOrchestrationInstanceCreated(timestamp=NOW, event_id=2, instance_id="kid", name="c"),
    h.SubOrchestrationInstanceCreated(timestamp=NOW, event_id=3, instance_id="fine-kid", name="c"),
    h.TaskFailed(timestamp=NOW, task_scheduled_id=1, failure=FAILURE),
    h.SubOrchestrationInstanceFailed(timestamp=NOW, task_scheduled_id=2, failure=FAILURE),
    h.SubOrchestrationInstanceCompleted(timestamp=NOW, task_scheduled_id=3, result="2"),
    h.ExecutionCompleted(timestamp=NOW, status=Status.FAILED, failure=FAILURE),
]


def test_rewind_forgets_failures_and_keeps_successes() -> None:
    clean = rewind.clean_history(FAILED_HISTORY, "new")
    names = [type(e).__name__ for e in clean]
    assert names == [
        "OrchestratorStarted",
        "ExecutionStarted",
        "TaskScheduled",
        "TaskCompleted",
        "SubOrchestrationInstanceCreated",
        "SubOrchestrationInstanceCreated",
        "SubOrchestrationInstanceCompleted",
    ]
    started = clean[1]
    assert isinstance(started, h.ExecutionStarted) and started.execution_id == "new"
    assert [e.event_id for e in clean if isinstance(e, h.TaskScheduled)] == [0]  # "bad" runs again
    assert rewind.failed_children(FAILED_HISTORY) == ["kid"]


def test_plan_rewind_reopens_the_instance_and_wakes_it_and_its_failed_children() -> None:
    record = InstanceRecord(
        instance_id="i",
        name="o",
        execution_id="old",
        status=Status.FAILED,
        created_at=NOW,
        last_updated_at=NOW,
        failure=FAILURE,
        completed_at=NOW,
    )
    request = h.ExecutionRewound(timestamp=NOW, reason="fixed")
    assert rewind.is_rewind_request(record, [h.EventRaised(timestamp=NOW, name="x"), request]) is request
    commit = rewind.plan_rewind(record, "token", FAILED_HISTORY, request, NOW)
    assert commit.reset_history and commit.token == "token"
    assert record.status is Status.RUNNING and record.failure is None and record.completed_at is None
    assert record.execution_id != "old"
    assert [(m.instance_id, type(m.event).__name__) for m in commit.messages] == [
        ("i", "ExecutionRewound"),
        ("kid", "ExecutionRewound"),
    ]
    assert all(isinstance(m.event, h.ExecutionRewound) and m.event.reason == "fixed" for m in commit.messages)
    # Only a FAILED instance takes a rewind request.
    record.status = Status.COMPLETED
    assert rewind.is_rewind_request(record, [request]) is None
