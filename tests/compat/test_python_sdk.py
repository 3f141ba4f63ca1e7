"""The official Python SDK (durabletask 1.12 and durabletask-azuremanaged 1.12), unmodified,
against `duratask serve`: every scenario runs with both packages' client and worker."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from durabletask import task
from durabletask.client import OrchestrationQuery, OrchestrationStatus

from tests.compat.conftest import make_client, running_worker
from tests.compat.serverlib import ServerThread

TIMEOUT = 30

# --- orchestrators and activities (module level: the SDK names them after the functions) -------


def say_hello(ctx: task.ActivityContext, city: str) -> str:
    return f"Hello {city}!"


def hello_cities(ctx: task.OrchestrationContext, _: Any) -> Any:
    greetings = []
    for city in ("Tokyo", "Seattle", "London"):
        greetings.append((yield ctx.call_activity(say_hello, input=city)))
    return greetings


def square(ctx: task.ActivityContext, n: int) -> int:
    return n * n


def fan_out(ctx: task.OrchestrationContext, n: int) -> Any:
    results = yield task.when_all([ctx.call_activity(square, input=i) for i in range(n)])
    return sum(results)


def sleeper(ctx: task.OrchestrationContext, seconds: float) -> Any:
    before = ctx.current_utc_datetime
    yield ctx.create_timer(timedelta(seconds=seconds))
    return (ctx.current_utc_datetime - before).total_seconds()


def approval(ctx: task.OrchestrationContext, _: Any) -> Any:
    decision = yield ctx.wait_for_external_event("approval")
    return {"approved": decision}


def two_events(ctx: task.OrchestrationContext, _: Any) -> Any:
    first = yield ctx.wait_for_external_event("first")
    second = yield ctx.wait_for_external_event("second")
    return [first, second]


def child(ctx: task.OrchestrationContext, n: int) -> Any:
    value = yield ctx.call_activity(square, input=n)
    return value + 1


def parent(ctx: task.OrchestrationContext, n: int) -> Any:
    results = yield task.when_all(
        [
            ctx.call_sub_orchestrator(child, input=i, instance_id=f"{ctx.instance_id}-child-{i}")
            for i in range(n)
        ]
    )
    return results


def waits_forever(ctx: task.OrchestrationContext, _: Any) -> Any:
    yield ctx.wait_for_external_event("never")


def parent_of_waiter(ctx: task.OrchestrationContext, _: Any) -> Any:
    yield ctx.call_sub_orchestrator(waits_forever, instance_id=f"{ctx.instance_id}-waiter")


def echo(ctx: task.OrchestrationContext, value: Any) -> Any:
    return value


def boom(ctx: task.ActivityContext, _: Any) -> Any:
    raise ValueError("kaboom")


def calls_boom(ctx: task.OrchestrationContext, _: Any) -> Any:
    yield ctx.call_activity(boom)


# Rewind: `flaky` fails until it is told to heal; `steady` must run once, before and after rewind.
RUNS: Counter[str] = Counter()
HEALED = threading.Event()


def steady(ctx: task.ActivityContext, _: Any) -> str:
    RUNS["steady"] += 1
    return "kept"


def flaky(ctx: task.ActivityContext, _: Any) -> str:
    RUNS["flaky"] += 1
    if not HEALED.is_set():
        raise RuntimeError("dependency down")
    return "recovered"


def rewindable(ctx: task.OrchestrationContext, _: Any) -> Any:
    a = yield ctx.call_activity(steady)
    b = yield ctx.call_activity(flaky)
    return f"{a}:{b}"


def flaky_child(ctx: task.OrchestrationContext, _: Any) -> Any:
    value = yield ctx.call_activity(flaky)
    return value


def rewindable_parent(ctx: task.OrchestrationContext, _: Any) -> Any:
    a = yield ctx.call_activity(steady)
    b = yield ctx.call_sub_orchestrator(flaky_child, instance_id=f"{ctx.instance_id}-child")
    return f"{a}:{b}"


def counter(ctx: task.OrchestrationContext, n: int) -> Any:
    ctx.set_custom_status({"at": n})
    if n < 3:
        yield ctx.create_timer(timedelta(milliseconds=1))
        ctx.continue_as_new(n + 1)
        return None
    return n


ATTEMPTS: Counter[str] = Counter()


def fails_twice(ctx: task.ActivityContext, key: str) -> str:
    ATTEMPTS[key] += 1
    if ATTEMPTS[key] < 3:
        raise RuntimeError(f"attempt {ATTEMPTS[key]} failed")
    return f"ok after {ATTEMPTS[key]}"


def retrying(ctx: task.OrchestrationContext, key: str) -> Any:
    policy = task.RetryPolicy(first_retry_interval=timedelta(milliseconds=100), max_number_of_attempts=3)
    return (yield ctx.call_activity(fails_twice, input=key, retry_policy=policy))


def event_or_timeout(ctx: task.OrchestrationContext, seconds: float) -> Any:
    event = ctx.wait_for_external_event("go")
    timeout = ctx.create_timer(timedelta(seconds=seconds))
    winner = yield task.when_any([event, timeout])
    return "event" if winner == event else "timeout"


def failing_child(ctx: task.OrchestrationContext, _: Any) -> Any:
    yield ctx.call_activity(boom)


def catches_child_failure(ctx: task.OrchestrationContext, _: Any) -> Any:
    try:
        yield ctx.call_sub_orchestrator(failing_child, instance_id=f"{ctx.instance_id}-child")
    except task.TaskFailedError as failure:
        return f"caught: {failure.details.message}"
    return "no failure"


ORCHESTRATORS = [
    hello_cities,
    fan_out,
    sleeper,
    approval,
    two_events,
    child,
    parent,
    waits_forever,
    parent_of_waiter,
    echo,
    calls_boom,
    rewindable,
    flaky_child,
    rewindable_parent,
    counter,
    retrying,
    event_or_timeout,
    failing_child,
    catches_child_failure,
]
ACTIVITIES = [say_hello, square, boom, steady, flaky, fails_twice]


@pytest.fixture(scope="module", autouse=True)
def worker(server: ServerThread, flavour: str) -> Any:
    """One worker per server, with every orchestrator and activity of this module."""
    w = running_worker(flavour, server.address, ORCHESTRATORS, ACTIVITIES)
    yield w
    w.stop()


def completed(client: Any, instance_id: str) -> Any:
    state = client.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)
    assert state is not None
    return state


# --- scenarios -------------------------------------------------------------------------------


def test_activity_sequence(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(hello_cities)
    state = completed(client, instance_id)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.get_output() == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    assert state.name == "hello_cities"
    history = client.get_orchestration_history(instance_id)
    kinds = [type(e).__name__ for e in history]
    assert kinds.count("TaskScheduledEvent") == 3 and kinds.count("TaskCompletedEvent") == 3
    assert kinds[0] == "OrchestratorStartedEvent" and "ExecutionCompletedEvent" in kinds


def test_fan_out_fan_in(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(fan_out, input=50)
    state = completed(client, instance_id)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.get_output() == sum(i * i for i in range(50))


def test_durable_timer(client: Any) -> None:
    started = time.monotonic()
    instance_id = client.schedule_new_orchestration(sleeper, input=1.0)
    state = completed(client, instance_id)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.get_output() >= 1.0
    assert time.monotonic() - started >= 1.0


def test_scheduled_start_waits(client: Any) -> None:
    start_at = datetime.now(UTC) + timedelta(seconds=1.5)
    instance_id = client.schedule_new_orchestration(echo, input="later", start_at=start_at)
    assert client.get_orchestration_state(instance_id).runtime_status == OrchestrationStatus.PENDING
    state = completed(client, instance_id)
    assert state.get_output() == "later"
    assert datetime.now(UTC) >= start_at


def test_external_events(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(approval)
    started = client.wait_for_orchestration_start(instance_id, timeout=TIMEOUT)
    assert started.runtime_status == OrchestrationStatus.RUNNING
    client.raise_orchestration_event(instance_id, "approval", data=True)
    assert completed(client, instance_id).get_output() == {"approved": True}

    # Events that arrive before they are awaited are kept, in order.
    other = client.schedule_new_orchestration(two_events)
    client.raise_orchestration_event(other, "second", data=2)
    client.raise_orchestration_event(other, "first", data=1)
    assert completed(client, other).get_output() == [1, 2]


def test_sub_orchestrations(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(parent, input=4)
    state = completed(client, instance_id)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.get_output() == [1, 2, 5, 10]
    assert completed(client, f"{instance_id}-child-3").get_output() == 10


def test_activity_failure_fails_the_instance(client: Any) -> None:
    state = completed(client, client.schedule_new_orchestration(calls_boom))
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.failure_details is not None
    assert "kaboom" in state.failure_details.message


def test_suspend_resume(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(approval)
    client.wait_for_orchestration_start(instance_id, timeout=TIMEOUT)
    client.suspend_orchestration(instance_id, reason="maintenance")
    wait_for_status(client, instance_id, OrchestrationStatus.SUSPENDED)
    client.raise_orchestration_event(instance_id, "approval", data="while suspended")
    time.sleep(0.5)  # the event must wait for the resume
    assert client.get_orchestration_state(instance_id).runtime_status == OrchestrationStatus.SUSPENDED
    client.resume_orchestration(instance_id, reason="done")
    state = completed(client, instance_id)
    assert state.get_output() == {"approved": "while suspended"}


def test_terminate_is_recursive(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(parent_of_waiter)
    child_id = f"{instance_id}-waiter"
    client.wait_for_orchestration_start(child_id, timeout=TIMEOUT)
    client.terminate_orchestration(instance_id, output="stopped", recursive=True)
    state = completed(client, instance_id)
    assert state.runtime_status == OrchestrationStatus.TERMINATED
    assert state.get_output() == "stopped"
    assert completed(client, child_id).runtime_status == OrchestrationStatus.TERMINATED


def test_query_filters_and_paging(client: Any) -> None:
    # The server is shared by the module's tests: this one looks at its own instances (by prefix,
    # or created after it began).
    began = datetime.now(UTC)
    done = [client.schedule_new_orchestration(echo, input=i, instance_id=f"q-done-{i}") for i in range(5)]
    for instance_id in done:
        completed(client, instance_id)
    waiting = client.schedule_new_orchestration(waits_forever, instance_id="q-wait")
    client.wait_for_orchestration_start(waiting, timeout=TIMEOUT)

    # Pages of 2, followed by the client through continuation tokens.
    mine = client.get_all_orchestration_states(
        OrchestrationQuery(instance_id_prefix="q-", max_instance_count=2)
    )
    assert sorted(s.instance_id for s in mine) == sorted([*done, waiting])
    assert all(s.serialized_input is None for s in mine)  # not asked for payloads
    since = client.get_all_orchestration_states(OrchestrationQuery(created_time_from=began))
    assert sorted(s.instance_id for s in since) == sorted([*done, waiting])

    running = client.get_all_orchestration_states(
        OrchestrationQuery(
            instance_id_prefix="q-",
            runtime_status=[OrchestrationStatus.RUNNING],
            fetch_inputs_and_outputs=True,
        )
    )
    assert [s.instance_id for s in running] == [waiting]
    by_prefix = client.get_all_orchestration_states(
        OrchestrationQuery(instance_id_prefix="q-done-", fetch_inputs_and_outputs=True)
    )
    assert sorted(s.get_output() for s in by_prefix) == [0, 1, 2, 3, 4]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert client.get_all_orchestration_states(OrchestrationQuery(created_time_from=future)) == []

    page = client.list_instance_ids(runtime_status=[OrchestrationStatus.COMPLETED], page_size=3)
    assert len(page.items) == 3 and page.continuation_token
    listed, token = list(page.items), page.continuation_token
    while token:
        more = client.list_instance_ids(
            runtime_status=[OrchestrationStatus.COMPLETED], page_size=3, continuation_token=token
        )
        listed += more.items
        token = more.continuation_token
    assert set(done) <= set(listed) and waiting not in listed and len(listed) == len(set(listed))


def test_purge(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(parent, input=2)
    completed(client, instance_id)
    result = client.purge_orchestration(instance_id, recursive=True)
    assert result.deleted_instance_count == 3
    assert client.get_orchestration_state(instance_id) is None
    assert client.get_orchestration_state(f"{instance_id}-child-0") is None

    began = datetime.now(UTC)
    for i in range(3):
        completed(client, client.schedule_new_orchestration(echo, input=i, instance_id=f"p-{i}"))
    by_filter = client.purge_orchestrations_by(
        created_time_from=began, runtime_status=[OrchestrationStatus.COMPLETED]
    )
    assert by_filter.deleted_instance_count == 3 and by_filter.is_complete is True
    assert client.get_orchestration_state("p-0") is None


def test_purge_refuses_running_and_missing(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(waits_forever)
    client.wait_for_orchestration_start(instance_id, timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as running:
        client.purge_orchestration(instance_id)
    assert running.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as missing:
        client.purge_orchestration("no-such-instance")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert client.get_orchestration_state(instance_id).runtime_status == OrchestrationStatus.RUNNING


def test_restart(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(echo, input={"n": 1})
    first = completed(client, instance_id)
    same = client.restart_orchestration(instance_id)
    assert same == instance_id
    again = completed(client, instance_id)
    assert again.get_output() == {"n": 1} and again.created_at >= first.created_at

    other = client.restart_orchestration(instance_id, restart_with_new_instance_id=True)
    assert other != instance_id
    assert completed(client, other).get_output() == {"n": 1}

    running = client.schedule_new_orchestration(waits_forever)
    client.wait_for_orchestration_start(running, timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as refused:
        client.restart_orchestration(running)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_rewind_reruns_only_failed_work(client: Any) -> None:
    RUNS.clear()
    HEALED.clear()
    instance_id = client.schedule_new_orchestration(rewindable)
    assert completed(client, instance_id).runtime_status == OrchestrationStatus.FAILED
    HEALED.set()
    client.rewind_orchestration(instance_id, reason="dependency is back")
    state = wait_for_status(client, instance_id, OrchestrationStatus.COMPLETED)
    assert state.get_output() == "kept:recovered"
    assert RUNS == Counter({"steady": 1, "flaky": 2})
    history = client.get_orchestration_history(instance_id)
    assert any(type(e).__name__ == "ExecutionRewoundEvent" for e in history)

    with pytest.raises(grpc.RpcError) as not_failed:
        client.rewind_orchestration(instance_id)
    assert not_failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_rewind_reaches_failed_sub_orchestrations(client: Any) -> None:
    RUNS.clear()
    HEALED.clear()
    instance_id = client.schedule_new_orchestration(rewindable_parent)
    assert completed(client, instance_id).runtime_status == OrchestrationStatus.FAILED
    assert completed(client, f"{instance_id}-child").runtime_status == OrchestrationStatus.FAILED
    HEALED.set()
    client.rewind_orchestration(instance_id)
    state = wait_for_status(client, instance_id, OrchestrationStatus.COMPLETED)
    assert state.get_output() == "kept:recovered"
    assert (
        client.get_orchestration_state(f"{instance_id}-child").runtime_status == OrchestrationStatus.COMPLETED
    )
    assert RUNS == Counter({"steady": 1, "flaky": 2})


def test_missing_instances(client: Any) -> None:
    assert client.get_orchestration_state("nobody") is None
    assert client.wait_for_orchestration_start("nobody", timeout=5) is None
    assert client.wait_for_orchestration_completion("nobody", timeout=5) is None
    with pytest.raises(grpc.RpcError) as raised:
        client.raise_orchestration_event("nobody", "e")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_wait_is_a_long_poll_to_the_deadline(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(waits_forever)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.wait_for_orchestration_completion(instance_id, timeout=1.5)
    assert 1.4 <= time.monotonic() - started < 5


def test_id_reuse(client: Any) -> None:
    from durabletask.internal import orchestrator_service_pb2 as official

    running = client.schedule_new_orchestration(waits_forever, instance_id="reuse-me")
    client.wait_for_orchestration_start(running, timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as exists:
        client.schedule_new_orchestration(echo, instance_id="reuse-me")
    assert exists.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # A policy that lists RUNNING replaces the running instance (terminated first).
    policy = official.OrchestrationIdReusePolicy(replaceableStatus=[official.ORCHESTRATION_STATUS_RUNNING])
    client.schedule_new_orchestration(echo, input="replaced", instance_id="reuse-me", reuse_id_policy=policy)
    assert completed(client, "reuse-me").get_output() == "replaced"
    # Without a policy, a finished instance is replaced; with one that does not list it, it is kept.
    client.schedule_new_orchestration(echo, input="again", instance_id="reuse-me")
    assert completed(client, "reuse-me").get_output() == "again"
    with pytest.raises(grpc.RpcError) as kept:
        client.schedule_new_orchestration(echo, instance_id="reuse-me", reuse_id_policy=policy)
    assert kept.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_task_hubs_are_separate(server: ServerThread, flavour: str) -> None:
    if flavour != "azuremanaged":
        pytest.skip("the taskhub metadata is what the azuremanaged client sends")
    default = make_client(flavour, server.address, taskhub="default")
    other = make_client(flavour, server.address, taskhub="other")
    unknown = make_client(flavour, server.address, taskhub="nope")
    try:
        instance_id = default.schedule_new_orchestration(echo, input=1)
        assert completed(default, instance_id).get_output() == 1
        assert other.get_orchestration_state(instance_id) is None  # another hub: another world
        with pytest.raises(grpc.RpcError) as not_served:
            unknown.get_orchestration_state(instance_id)
        assert not_served.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'nope' is not served" in (not_served.value.details() or "")
    finally:
        for c in (default, other, unknown):
            c.close()


def test_continue_as_new_and_custom_status(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(counter, input=0)
    state = completed(client, instance_id)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.get_output() == 3
    assert state.get_input() == 3  # the input of the last execution
    assert state.get_custom_status() == {"at": 3}


def test_activity_retry_policy(client: Any, flavour: str) -> None:
    state = completed(
        client, client.schedule_new_orchestration(retrying, input=f"retry-{flavour}-{uuid.uuid4().hex}")
    )
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.get_output() == "ok after 3"


def test_when_any_event_or_timeout(client: Any) -> None:
    timed_out = client.schedule_new_orchestration(event_or_timeout, input=0.5)
    answered = client.schedule_new_orchestration(event_or_timeout, input=30)
    client.wait_for_orchestration_start(answered, timeout=TIMEOUT)
    client.raise_orchestration_event(answered, "go")
    assert completed(client, answered).get_output() == "event"
    assert completed(client, timed_out).get_output() == "timeout"


def test_sub_orchestration_failure_reaches_the_parent(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(catches_child_failure)
    state = completed(client, instance_id)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert "kaboom" in state.get_output()
    assert completed(client, f"{instance_id}-child").runtime_status == OrchestrationStatus.FAILED


def wait_for_status(client: Any, instance_id: str, status: Any, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        state = client.get_orchestration_state(instance_id)
        if state is not None and state.runtime_status == status:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{instance_id} is {state and state.runtime_status}, not {status}")
        time.sleep(0.05)
