"""duratask.backend.entities: the pure planning of entity leases and of orchestrations' entity
messages, with hand-built rows and events (no storage, no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from duratask import history as h
from duratask.backend import entities as e
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.models import TaskFailureDetails
from duratask.storage.base import InstanceRecord

T0 = datetime(2024, 5, 17, 8, 30, tzinfo=UTC)
T1 = T0 + timedelta(seconds=1)
ENTITY = "@counter@k"
FAILURE = TaskFailureDetails(error_type="ValueError", error_message="no")


def row(
    state: str | None = None, status: e.EntityStatus | None = None, instance_id: str = ENTITY
) -> InstanceRecord:
    record = e.new_entity(instance_id, T0).record
    record.output = state
    record.custom_status = e._write_status(status) if status is not None else None
    return record


def signal(
    operation: str = "add", input: str | None = "1", request_id: str = "s"
) -> h.EntityOperationSignaled:
    return h.EntityOperationSignaled(
        timestamp=T0, request_id=request_id, operation=operation, input=input, target_instance_id=ENTITY
    )


def call(caller: str, operation: str = "get", request_id: str = "c") -> h.EntityOperationCalled:
    return h.EntityOperationCalled(
        timestamp=T0, request_id=request_id, operation=operation, parent_instance_id=caller
    )


def lock(
    caller: str, section: str, lock_set: list[str] | None = None, position: int = 0
) -> h.EntityLockRequested:
    return h.EntityLockRequested(
        timestamp=T0,
        critical_section_id=section,
        lock_set=lock_set or [ENTITY],
        position=position,
        parent_instance_id=caller,
    )


def unlock(caller: str, section: str) -> h.EntityUnlockSent:
    return h.EntityUnlockSent(timestamp=T0, critical_section_id=section, parent_instance_id=caller)


def plan(
    *events: h.HistoryEvent,
    state: str | None = None,
    status: e.EntityStatus | None = None,
    backlog=(),
    max_batch=100,
):  # type: ignore[no-untyped-def]
    return e.plan_lease(row(state, status), "tok", list(backlog), list(events), T0, max_batch)


# --- ids --------------------------------------------------------------------------------------


def test_entity_ids() -> None:
    assert e.parse_entity_id("@counter@k") == ("counter", "k")
    assert e.parse_entity_id("@counter@k@with@ats") == ("counter", "k@with@ats")
    for bad in ("counter", "@counter", "@@k", "@counter@", ""):
        with pytest.raises(ValueError):
            e.parse_entity_id(bad)
    assert e.is_entity_id("@x@y") and not e.is_entity_id("order-1")
    assert e.normalize_prefix(None) == e.normalize_prefix("") == "@"
    assert e.normalize_prefix("Counter") == "@counter"
    assert e.normalize_prefix("@Counter@Key") == "@counter@Key"


def test_a_new_entity_row_is_running_without_state_and_wakes_once() -> None:
    new = e.new_entity(ENTITY, T0)
    assert (new.record.name, new.record.status, new.record.output) == ("counter", Status.RUNNING, None)
    assert isinstance(new.started, h.ExecutionStarted) and new.visible_at == T0
    with pytest.raises(ValueError):
        e.new_entity("order-1", T0)


# --- one lease --------------------------------------------------------------------------------


def test_operations_form_one_batch_in_arrival_order_and_markers_are_skipped() -> None:
    marker = e.new_entity(ENTITY, T0).started
    first, second, third = signal(request_id="1"), call("orch", request_id="2"), signal(request_id="3")
    p = plan(marker, first, second, third, state="5")

    assert p.operations == [first, second, third]
    assert p.backlog == [] and p.messages == [] and not p.wake
    item = p.work_item()
    assert (item.instance_id, item.name, item.token, item.state) == (ENTITY, "counter", "tok", "5")


def test_a_batch_is_capped_and_the_rest_waits_in_order_with_a_wake_up() -> None:
    ops = [signal(request_id=str(n)) for n in range(5)]
    p = plan(*ops, max_batch=2)
    assert p.operations == ops[:2]
    assert p.backlog == ops[2:] and p.wake

    commit = e.plan_commit(p, e.EntityBatchOutcome(results=[e.OperationSucceeded()] * 2, state="2"), T1)
    assert commit.history_append == ops[2:] and commit.reset_history
    (wake,) = [m for m in commit.messages if m.instance_id == ENTITY]
    assert isinstance(wake.event, h.ExecutionStarted)
    assert e.read_status(commit.instance).backlog == 3


def test_a_lock_on_the_last_entity_of_the_set_is_granted_to_the_orchestration() -> None:
    p = plan(lock("orch", "cs"))
    assert p.operations == []
    assert (p.status.locked_by, p.status.critical_section_id) == ("orch", "cs")
    (granted,) = p.messages
    assert granted.instance_id == "orch"
    assert granted.event == h.EntityLockGranted(timestamp=T0, critical_section_id="cs")


def test_a_lock_passes_on_to_the_next_entity_of_the_set() -> None:
    p = plan(lock("orch", "cs", [ENTITY, "@counter@z"]))
    (forwarded,) = p.messages
    assert forwarded.instance_id == "@counter@z"
    assert isinstance(forwarded.event, h.EntityLockRequested) and forwarded.event.position == 1
    assert [n.record.instance_id for n in p.new_instances] == ["@counter@z"]  # created if missing


def test_while_locked_only_the_holder_gets_through_and_the_rest_waits_in_order() -> None:
    held = e.EntityStatus(locked_by="orch", critical_section_id="cs")
    others = [signal(request_id="s1"), call("other", request_id="c1"), lock("other", "cs2")]
    mine = call("orch", request_id="c2")
    p = plan(others[0], mine, others[1], others[2], status=held)

    assert p.operations == [mine]
    assert p.backlog == others
    assert p.status.locked_by == "orch"
    commit = e.plan_commit(p, e.EntityBatchOutcome(results=[e.OperationSucceeded(result="1")]), T1)
    assert e.read_status(commit.instance) == e.EntityStatus(
        locked_by="orch", critical_section_id="cs", backlog=3
    )


def test_an_unlock_lets_the_waiting_messages_through_first() -> None:
    held = e.EntityStatus(locked_by="orch", critical_section_id="cs")
    waiting = signal(request_id="waiting")
    p = plan(unlock("orch", "cs"), signal(request_id="later"), backlog=[waiting], status=held)
    assert [op.request_id for op in p.operations] == ["waiting", "later"]
    assert p.status == e.EntityStatus()


def test_a_waiting_lock_request_takes_the_lock_when_it_is_released() -> None:
    held = e.EntityStatus(locked_by="orch", critical_section_id="cs")
    p = plan(lock("next", "cs2"), signal(request_id="s"), unlock("orch", "cs"), status=held)
    assert p.operations == []
    assert (p.status.locked_by, p.status.critical_section_id) == ("next", "cs2")
    assert [m.instance_id for m in p.messages] == ["next"]
    assert [type(x).__name__ for x in p.backlog] == ["EntityOperationSignaled"]


def test_unlocks_of_other_sections_wait_or_are_dropped() -> None:
    held = e.EntityStatus(locked_by="orch", critical_section_id="cs")
    foreign = unlock("other", "old")
    assert plan(foreign, status=held).backlog == [foreign]  # may belong to a lock still on its way
    free = plan(foreign)
    assert free.backlog == [] and free.status == e.EntityStatus()


# --- committing a lease -----------------------------------------------------------------------


def test_results_go_back_to_callers_and_the_state_is_stored() -> None:
    p = plan(call("orch", request_id="c1"), signal(request_id="s1"), call("orch", request_id="c2"), state="1")
    outcome = e.EntityBatchOutcome(
        results=[
            e.OperationSucceeded(result="2"),
            e.OperationFailed(failure=FAILURE),
            e.OperationFailed(failure=FAILURE),
        ],
        state="3",
    )
    commit = e.plan_commit(p, outcome, T1)

    assert commit.instance.output == "3" and commit.instance.last_updated_at == T1
    assert commit.instance.status is Status.RUNNING and commit.token == "tok"
    replies = [(m.instance_id, m.event) for m in commit.messages]
    assert replies == [
        ("orch", h.EntityOperationCompleted(timestamp=T1, request_id="c1", output="2")),
        ("orch", h.EntityOperationFailed(timestamp=T1, request_id="c2", failure=FAILURE)),
    ]
    assert commit.history_append == [] and commit.reset_history and commit.instance.custom_status is None


def test_operations_left_unanswered_run_first_in_the_next_batch() -> None:
    ops = [call("orch", request_id=str(n)) for n in range(3)]
    p = plan(*ops, backlog=[], state="0")
    commit = e.plan_commit(p, e.EntityBatchOutcome(results=[e.OperationSucceeded(result="1")], state="1"), T1)
    assert commit.instance.output == "1"
    assert commit.history_append == ops[1:]
    assert [m.instance_id for m in commit.messages] == ["orch", ENTITY]  # one reply, one wake-up


def test_a_batch_that_failed_as_a_whole_fails_every_operation_and_keeps_the_state() -> None:
    p = plan(call("orch", request_id="c1"), call("orch", request_id="c2"), state="7")
    outcome = e.EntityBatchOutcome(
        results=[],
        failure=FAILURE,
        state="ignored",
        actions=[e.SignalEntityAction(instance_id="@x@y", operation="o")],
    )
    commit = e.plan_commit(p, outcome, T1)
    assert commit.instance.output == "7"
    assert [type(m.event).__name__ for m in commit.messages] == ["EntityOperationFailed"] * 2
    assert commit.new_instances == []


def test_actions_signal_entities_and_start_orchestrations() -> None:
    later = T1 + timedelta(minutes=5)
    p = plan(signal())
    outcome = e.EntityBatchOutcome(
        results=[e.OperationSucceeded()],
        state="1",
        actions=[
            e.SignalEntityAction(instance_id="@other@a", operation="ping", input='"x"', scheduled_time=later),
            e.StartOrchestrationAction(instance_id="job-1", name="job", input="1", version="2"),
            e.StartOrchestrationAction(instance_id="", name="job", scheduled_time=later),
        ],
    )
    commit = e.plan_commit(p, outcome, T1)
    (signalled,) = commit.messages
    assert signalled.instance_id == "@other@a" and signalled.visible_at == later
    assert isinstance(signalled.event, h.EntityOperationSignaled)
    assert (signalled.event.operation, signalled.event.input) == ("ping", '"x"')
    created = {n.record.instance_id: n for n in commit.new_instances}
    assert created["@other@a"].record.status is Status.RUNNING
    job = created["job-1"]
    assert (job.record.name, job.record.input, job.record.version, job.record.status) == (
        "job",
        "1",
        "2",
        Status.PENDING,
    )
    (unnamed,) = [n for i, n in created.items() if i not in ("@other@a", "job-1")]
    assert unnamed.visible_at == later and unnamed.record.scheduled_start == later


def test_a_plan_without_operations_is_stored_at_once() -> None:
    p = plan(lock("orch", "cs"))
    commit = e.plan_commit(p, None, T1)
    assert e.read_status(commit.instance).locked_by == "orch"
    assert [m.instance_id for m in commit.messages] == ["orch"]


# --- what orchestrations send -----------------------------------------------------------------


def orchestration(instance_id: str = "orch") -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        name="o",
        execution_id="x1",
        status=Status.RUNNING,
        created_at=T0,
        last_updated_at=T0,
    )


def test_an_episode_records_and_sends_its_entity_messages() -> None:
    later = T0 + timedelta(minutes=1)
    actions: list[h.OrchestratorAction] = [
        h.ScheduleTask(id=0, name="act"),
        h.SendEntityMessage(
            id=1,
            message=h.EntityOperationCalled(
                timestamp=T0, request_id="r1", operation="add", input="1", target_instance_id=ENTITY
            ),
        ),
        h.SendEntityMessage(
            id=2,
            message=h.EntityOperationSignaled(
                timestamp=T0,
                request_id="r2",
                operation="add",
                scheduled_time=later,
                target_instance_id=ENTITY,
            ),
        ),
        h.SendEntityMessage(
            id=3,
            message=h.EntityLockRequested(timestamp=T0, critical_section_id="cs", lock_set=["@a@1", "@b@2"]),
        ),
    ]
    started = h.OrchestratorStarted(timestamp=T1)
    commit = e.plan_episode(orchestration(), "tok", [started], actions, None, T1)

    assert [(type(ev).__name__, ev.event_id) for ev in commit.history_append] == [
        ("OrchestratorStarted", -1),
        ("TaskScheduled", 0),
        ("EntityOperationCalled", 1),
        ("EntityOperationSignaled", 2),
        ("EntityLockRequested", 3),
    ]
    assert all(ev.timestamp == T1 for ev in commit.history_append[1:])
    sent = {m.instance_id: m for m in commit.messages}
    called = next(m.event for m in commit.messages if isinstance(m.event, h.EntityOperationCalled))
    assert (called.parent_instance_id, called.parent_execution_id, called.event_id) == ("orch", "x1", -1)
    delayed = next(m for m in commit.messages if isinstance(m.event, h.EntityOperationSignaled))
    assert delayed.visible_at == later
    assert sent["@a@1"].event.parent_instance_id == "orch"  # type: ignore[union-attr]
    assert sorted({n.record.instance_id for n in commit.new_instances}) == ["@a@1", ENTITY]
    assert [a.task_id for a in commit.activities] == [0]


def test_unlocks_sent_with_the_completion_are_recorded_before_the_end() -> None:
    actions: list[h.OrchestratorAction] = [
        h.CompleteOrchestration(id=0, status=Status.COMPLETED, result='"done"'),
        h.SendEntityMessage(
            id=1,
            message=h.EntityUnlockSent(timestamp=T0, critical_section_id="cs", target_instance_id=ENTITY),
        ),
    ]
    commit = e.plan_episode(orchestration(), "tok", [], actions, None, T1)
    assert [type(ev).__name__ for ev in commit.history_append] == ["EntityUnlockSent", "ExecutionCompleted"]
    assert commit.instance.status is Status.COMPLETED
    assert [m.instance_id for m in commit.messages] == [ENTITY]


def test_continue_as_new_sends_the_unlocks_but_does_not_record_them() -> None:
    actions: list[h.OrchestratorAction] = [
        h.SendEntityMessage(
            id=0,
            message=h.EntityUnlockSent(timestamp=T0, critical_section_id="cs", target_instance_id=ENTITY),
        ),
        h.CompleteOrchestration(id=1, status=Status.CONTINUED_AS_NEW, result="2"),
    ]
    commit = e.plan_episode(orchestration(), "tok", [], actions, None, T1)
    assert commit.reset_history and commit.history_append == []
    assert ENTITY in {m.instance_id for m in commit.messages}


def test_messages_no_entity_can_act_on_are_refused() -> None:
    good = h.EntityOperationCalled(timestamp=T0, request_id="r", operation="add", target_instance_id=ENTITY)
    e.validate_message(good)
    bad = [
        h.EntityOperationCalled(timestamp=T0, request_id="r", operation="add"),
        h.EntityOperationCalled(timestamp=T0, request_id="r", operation="add", target_instance_id="orch"),
        h.EntityOperationSignaled(timestamp=T0, request_id="r", operation="", target_instance_id=ENTITY),
        h.EntityLockRequested(timestamp=T0, critical_section_id="cs", lock_set=[]),
        h.EntityLockRequested(timestamp=T0, critical_section_id="cs", lock_set=[ENTITY, "orch"]),
    ]
    for message in bad:
        with pytest.raises(ValueError):
            e.validate_message(message)


def test_query_filters() -> None:
    record = row(state="1")
    record.last_updated_at = T1
    assert e.matches(record, e.EntityQuery())
    assert not e.matches(row(), e.EntityQuery())
    assert e.matches(row(), e.EntityQuery(include_transient=True))
    assert e.matches(record, e.EntityQuery(last_modified_from=T1))
    assert not e.matches(record, e.EntityQuery(last_modified_to=T1))
    assert e.matches(record, e.EntityQuery(last_modified_to=T1 + timedelta(microseconds=1)))
    meta = e.metadata_of(row("1", e.EntityStatus(locked_by="o", critical_section_id="c", backlog=2)), True)
    assert (meta.locked_by, meta.backlog_queue_size, meta.serialized_state) == ("o", 2, "1")
    assert e.metadata_of(record, False).serialized_state is None
    assert e.is_empty(row()) and not e.is_empty(record)
    assert not e.is_empty(row(status=e.EntityStatus(locked_by="o", critical_section_id="c")))
