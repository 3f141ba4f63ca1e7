"""The replay engine over hand-built histories.

``Sim`` plays the backend: it keeps the history the way the backend stores it (new events, then one
record per action with ``event_id == action.id``), and runs every episode twice: on a cached
executor fed only the new events, and on a fresh executor replaying the whole history. Every test
that goes through ``Sim`` therefore also checks that both give identical results.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import pytest

from duratask.errors import NonDeterminismError, TaskFailedError
from duratask.history import (
    CompleteOrchestration,
    ContinueAsNew,
    CreateSubOrchestration,
    CreateTimer,
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
    ScheduleTask,
    SendEvent,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.models import TaskFailureDetails
from duratask.orchestration import (
    EpisodeResult,
    OrchestrationContext,
    OrchestrationExecutor,
    RetryPolicy,
    Task,
    when_all,
    when_any,
)
from duratask.serialization import from_json, result_type_of, to_json

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
INSTANCE = "order-42"


# --- the simulated backend ----------------------------------------------------------------------


def record_of(action: OrchestratorAction, at: datetime) -> HistoryEvent:
    """The history event the backend stores for an action."""
    records: dict[type[Any], Callable[[Any], HistoryEvent]] = {
        ScheduleTask: lambda a: TaskScheduled(timestamp=at, event_id=a.id, name=a.name, input=a.input),
        CreateTimer: lambda a: TimerCreated(timestamp=at, event_id=a.id, fire_at=a.fire_at),
        CreateSubOrchestration: lambda a: SubOrchestrationInstanceCreated(
            timestamp=at, event_id=a.id, instance_id=a.instance_id, name=a.name, input=a.input
        ),
        SendEvent: lambda a: EventSent(
            timestamp=at, event_id=a.id, instance_id=a.instance_id, name=a.name, input=a.data
        ),
        CompleteOrchestration: lambda a: ExecutionCompleted(
            timestamp=at, event_id=a.id, status=a.status, result=a.result, failure=a.failure
        ),
    }
    return records[type(action)](action)


class Sim:
    """One orchestration instance, episode by episode, cached and fresh side by side."""

    def __init__(self, fn: Callable[..., Any], *, instance_id: str = INSTANCE) -> None:
        self.fn = fn
        self.instance_id = instance_id
        self.clock = T0
        self.history: list[HistoryEvent] = []
        self.cached = OrchestrationExecutor(fn, instance_id=instance_id)
        self.executions = 1

    def tick(self, seconds: float = 1) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock

    def start(self, input: Any = None, *extra: HistoryEvent) -> EpisodeResult:
        return self.episode(self.started(to_json(input)), *extra)

    def started(self, encoded_input: str | None) -> ExecutionStarted:
        return ExecutionStarted(
            timestamp=self.clock,
            name=getattr(self.fn, "__name__", "orchestrator"),
            instance_id=self.instance_id,
            execution_id=f"exec-{self.executions}",
            input=encoded_input,
        )

    def episode(self, *events: HistoryEvent, advance: float = 1) -> EpisodeResult:
        events = tuple(self._with_fire_time(e) for e in events)
        new: list[HistoryEvent] = [OrchestratorStarted(timestamp=self.tick(advance)), *events]
        fresh = OrchestrationExecutor(self.fn, instance_id=self.instance_id).execute(list(self.history), new)
        result = self.cached.execute([], new)
        assert result == fresh, "a cached executor and a full replay disagree"
        self.history += new
        self.history += [record_of(a, self.clock) for a in result.actions]
        assert self.cached.history_length == len(self.history)
        return result

    def _with_fire_time(self, event: HistoryEvent) -> HistoryEvent:
        """``fired(id)`` means "the timer fires": give it the time its TimerCreated records."""
        if not isinstance(event, TimerFired) or event.fire_at != T0:
            return event
        for past in reversed(self.history):
            if isinstance(past, TimerCreated) and past.event_id == event.timer_id:
                return msgspec.structs.replace(event, fire_at=past.fire_at)
        return event

    def continue_as_new(self, result: EpisodeResult) -> EpisodeResult:
        """Start the next execution the way the backend does after CONTINUED_AS_NEW."""
        completion = result.actions[-1]
        assert isinstance(completion, CompleteOrchestration)
        assert completion.status is Status.CONTINUED_AS_NEW
        self.history = []
        self.executions += 1
        self.cached = OrchestrationExecutor(self.fn, instance_id=self.instance_id)
        return self.episode(self.started(completion.result), *completion.carryover_events)


def completed(task_id: int, value: Any = None) -> TaskCompleted:
    return TaskCompleted(timestamp=T0, task_scheduled_id=task_id, result=to_json(value))


def failed(task_id: int, message: str = "boom", **details: Any) -> TaskFailed:
    failure = TaskFailureDetails(error_type="ValueError", error_message=message, **details)
    return TaskFailed(timestamp=T0, task_scheduled_id=task_id, failure=failure)


def fired(timer_id: int) -> TimerFired:
    return TimerFired(timestamp=T0, fire_at=T0, timer_id=timer_id)


def raised(name: str, value: Any = None) -> EventRaised:
    return EventRaised(timestamp=T0, name=name, input=to_json(value))


def completion(result: EpisodeResult) -> CompleteOrchestration:
    assert result.is_complete
    action = result.actions[-1]
    assert isinstance(action, CompleteOrchestration)
    return action


def output(result: EpisodeResult) -> Any:
    action = completion(result)
    assert action.status is Status.COMPLETED, action.failure
    return from_json(action.result)


def failure(result: EpisodeResult) -> TaskFailureDetails:
    action = completion(result)
    assert action.status is Status.FAILED
    assert action.failure is not None
    return action.failure


def schedules(result: EpisodeResult) -> list[tuple[int, str, Any]]:
    return [(a.id, a.name, from_json(a.input)) for a in result.actions if isinstance(a, ScheduleTask)]


def waiting(result: EpisodeResult) -> None:
    assert not result.is_complete, result.actions


# --- activities and orchestrators used below ----------------------------------------------------


@dataclass
class Order:
    id: str
    quantity: int


@dataclass
class Receipt:
    order_id: str
    paid_at: datetime


def say_hello(ctx: Any, city: str) -> str:
    return f"Hello {city}!"


def charge(ctx: Any, order: Order) -> Receipt:
    raise NotImplementedError  # only its name and return type matter here


async def hello_cities(ctx: OrchestrationContext, _: Any) -> list[str]:
    return [await ctx.call_activity(say_hello, city) for city in ("Tokyo", "Seattle", "London")]


def hello_cities_generator(ctx: OrchestrationContext, _: Any) -> Generator[Task[Any], Any, list[str]]:
    results = []
    for city in ("Tokyo", "Seattle", "London"):
        results.append((yield ctx.call_activity(say_hello, city)))
    return results


# --- both orchestrator styles -------------------------------------------------------------------


@pytest.mark.parametrize("orchestrator", [hello_cities, hello_cities_generator])
def test_a_sequence_of_activities_replays_episode_by_episode(orchestrator: Callable[..., Any]) -> None:
    sim = Sim(orchestrator)
    first = sim.start()
    assert schedules(first) == [(0, "say_hello", "Tokyo")]
    waiting(first)
    assert schedules(sim.episode(completed(0, "Hello Tokyo!"))) == [(1, "say_hello", "Seattle")]
    assert schedules(sim.episode(completed(1, "Hello Seattle!"))) == [(2, "say_hello", "London")]
    last = sim.episode(completed(2, "Hello London!"))
    assert output(last) == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    assert [a.id for a in last.actions] == [3]


def test_the_first_episode_matches_the_documented_realistic_order() -> None:
    executor = OrchestrationExecutor(hello_cities, instance_id=INSTANCE)
    start: list[HistoryEvent] = [OrchestratorStarted(timestamp=T0), Sim(hello_cities).started(None)]
    first = executor.execute([], start)
    assert first.actions == [ScheduleTask(id=0, name="say_hello", input='"Tokyo"')]
    assert (first.custom_status, first.is_complete, executor.history_length) == (None, False, 3)

    past: list[HistoryEvent] = [
        *start,
        TaskScheduled(timestamp=T0, event_id=0, name="say_hello", input='"Tokyo"'),
    ]
    new: list[HistoryEvent] = [OrchestratorStarted(timestamp=T0), completed(0, "x")]
    fresh = OrchestrationExecutor(hello_cities, instance_id=INSTANCE)
    assert fresh.execute(past, new) == executor.execute([], new)
    assert fresh.history_length == executor.history_length == 6


def test_a_plain_function_completes_at_once_with_its_return_value() -> None:
    def double(ctx: OrchestrationContext, n: int) -> int:
        return n * 2

    assert output(Sim(double).start(21)) == 42


def test_the_input_is_decoded_with_the_annotated_type_and_results_with_the_activity_return_type() -> None:
    seen: list[Any] = []

    async def checkout(ctx: OrchestrationContext, order: Order) -> str:
        seen.append(order)
        receipt = await ctx.call_activity(charge, order)
        seen.append(receipt)
        untyped = await ctx.call_activity("charge", order)  # by name: plain JSON
        seen.append(untyped)
        return str(receipt.order_id)

    sim = Sim(checkout)
    first = sim.start(Order("A1", 2))
    assert schedules(first) == [(0, "charge", {"id": "A1", "quantity": 2})]
    receipt = {"order_id": "A1", "paid_at": "2025-03-01T12:00:05Z"}
    sim.episode(completed(0, receipt))
    assert output(sim.episode(completed(1, receipt))) == "A1"
    seen.clear()
    OrchestrationExecutor(checkout, instance_id=INSTANCE).execute(sim.history, [])
    assert seen == [Order("A1", 2), Receipt("A1", datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)), receipt]


def test_an_input_that_does_not_fit_the_annotation_fails_the_instance() -> None:
    async def checkout(ctx: OrchestrationContext, order: Order) -> None:
        return None

    details = failure(Sim(checkout).start({"id": "A1"}))
    assert details.error_type == "duratask.errors.SerializationError"
    assert "Order" in details.error_message


def test_a_result_that_does_not_fit_the_activity_return_type_is_raised_in_the_orchestrator() -> None:
    async def checkout(ctx: OrchestrationContext, _: Any) -> str:
        try:
            await ctx.call_activity(charge, Order("A1", 1))
        except Exception as exc:  # noqa: BLE001 - the test wants to see what arrives
            return type(exc).__name__
        return "decoded"

    sim = Sim(checkout)
    sim.start()
    assert output(sim.episode(completed(0, {"unexpected": True}))) == "SerializationError"


def test_activity_names_come_from_duratask_name_then_function_name() -> None:
    def registered(ctx: Any, _: Any) -> None:
        return None

    registered.__duratask_name__ = "billing.charge"  # type: ignore[attr-defined]

    async def orchestrator(ctx: OrchestrationContext, _: Any) -> None:
        await ctx.call_activity(registered)

    assert schedules(Sim(orchestrator).start()) == [(0, "billing.charge", None)]


def test_bad_activity_references_fail_the_instance_clearly() -> None:
    async def empty_name(ctx: OrchestrationContext, _: Any) -> None:
        await ctx.call_activity("")

    async def not_a_function(ctx: OrchestrationContext, _: Any) -> None:
        await ctx.call_activity(42)  # type: ignore[arg-type]

    assert failure(Sim(empty_name).start()).error_type == "ValueError"
    assert failure(Sim(not_a_function).start()).error_type == "TypeError"


# --- failures -----------------------------------------------------------------------------------


class OrderRejected(Exception):
    pass


def test_an_activity_failure_raises_task_failed_error_with_its_details() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> dict[str, Any]:
        try:
            await ctx.call_activity(say_hello, "Nowhere")
        except TaskFailedError as exc:
            return {"message": str(exc), "type": exc.details.error_type, "inner": exc.details.error_message}
        return {}

    sim = Sim(orchestrator)
    sim.start()
    result = output(sim.episode(failed(0, "no such city")))
    assert result == {
        "message": "activity 'say_hello' failed: ValueError: no such city",
        "type": "ValueError",
        "inner": "no such city",
    }


def test_an_unhandled_task_failure_fails_the_instance_with_the_cause_inside() -> None:
    sim = Sim(hello_cities)
    sim.start()
    details = failure(sim.episode(failed(0, "no such city")))
    assert details.error_type == "duratask.errors.TaskFailedError"
    assert "no such city" in details.error_message
    assert details.inner_failure == TaskFailureDetails(error_type="ValueError", error_message="no such city")


def test_an_unhandled_exception_fails_the_instance_with_type_message_and_stack() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> None:
        await ctx.call_activity(say_hello, "Tokyo")
        raise OrderRejected("out of stock")

    sim = Sim(orchestrator)
    sim.start()
    result = sim.episode(completed(0, "hi"))
    details = failure(result)
    assert details.error_type.endswith(".OrderRejected")
    assert details.error_message == "out of stock"
    assert details.stack_trace is not None
    assert 'raise OrderRejected("out of stock")' in details.stack_trace
    assert [type(a) for a in result.actions] == [CompleteOrchestration]


def test_work_asked_for_by_a_failing_run_is_not_handed_out() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> None:
        ctx.call_activity(say_hello, "Tokyo")  # not awaited
        raise OrderRejected("changed my mind")

    result = Sim(orchestrator).start()
    assert [type(a) for a in result.actions] == [CompleteOrchestration]
    assert completion(result).id == 1


def test_awaiting_something_other_than_a_task_fails_the_instance() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> None:
        await asyncio.sleep(0)

    details = failure(Sim(orchestrator).start())
    assert details.error_type == "TypeError"
    assert "duratask tasks" in details.error_message


def test_an_unserializable_result_fails_the_instance() -> None:
    def orchestrator(ctx: OrchestrationContext, _: Any) -> object:
        return object()

    assert failure(Sim(orchestrator).start()).error_type == "duratask.errors.SerializationError"


# --- non-determinism ----------------------------------------------------------------------------


def replay_with(code: Callable[..., Any], history: list[HistoryEvent]) -> EpisodeResult:
    return OrchestrationExecutor(code, instance_id=INSTANCE).execute(
        history, [OrchestratorStarted(timestamp=T0)]
    )


def test_a_changed_activity_name_is_non_determinism_naming_the_step() -> None:
    async def v1(ctx: OrchestrationContext, _: Any) -> None:
        await ctx.call_activity("reserve")
        await ctx.call_activity("charge")
        await ctx.call_activity("ship")

    async def v2(ctx: OrchestrationContext, _: Any) -> None:
        await ctx.call_activity("reserve")
        await ctx.call_activity("charge_card")
        await ctx.call_activity("ship")

    sim = Sim(v1)
    sim.start()
    sim.episode(completed(0))
    sim.episode(completed(1))
    details = failure(replay_with(v2, sim.history))
    assert details.error_type == "duratask.errors.NonDeterminismError"
    assert details.error_message == (
        "non-deterministic orchestrator at step 1: history records call_activity('charge') "
        "but the orchestrator code now does call_activity('charge_card') at this step"
    )


def test_a_removed_step_is_non_determinism() -> None:
    async def v1(ctx: OrchestrationContext, _: Any) -> None:
        await ctx.call_activity("reserve")
        await ctx.create_timer(timedelta(hours=1))
        await ctx.call_activity("ship")

    async def v2(ctx: OrchestrationContext, _: Any) -> None:
        await ctx.call_activity("reserve")
        await ctx.wait_for_external_event("approved")

    async def v3(ctx: OrchestrationContext, _: Any) -> str:
        await ctx.call_activity("reserve")
        return "done early"

    sim = Sim(v1)
    sim.start()
    sim.episode(completed(0))
    for changed in (v2, v3):
        details = failure(replay_with(changed, sim.history))
        assert details.error_type == "duratask.errors.NonDeterminismError"
        assert "step 1: history records create_timer() but the orchestrator code now does nothing" in (
            details.error_message
        )


def test_a_step_of_another_kind_is_non_determinism() -> None:
    async def v1(ctx: OrchestrationContext, _: Any) -> None:
        ctx.send_event("other", "ping")
        await ctx.call_sub_orchestrator("child")

    async def v2(ctx: OrchestrationContext, _: Any) -> None:
        ctx.send_event("other", "pong")
        await ctx.call_sub_orchestrator("child")

    async def v3(ctx: OrchestrationContext, _: Any) -> None:
        ctx.send_event("other", "ping")
        await ctx.call_activity("child")

    sim = Sim(v1)
    sim.start()
    assert (
        "step 0: history records send_event('ping') but the orchestrator code now does send_event('pong')"
        in (failure(replay_with(v2, sim.history)).error_message)
    )
    assert (
        "step 1: history records call_sub_orchestrator('child') but the orchestrator code now does "
        "call_activity('child')" in failure(replay_with(v3, sim.history)).error_message
    )


def test_adding_steps_after_the_recorded_ones_replays_fine() -> None:
    async def v1(ctx: OrchestrationContext, _: Any) -> None:
        await ctx.call_activity("reserve")

    async def v2(ctx: OrchestrationContext, _: Any) -> None:
        await ctx.call_activity("reserve")
        await ctx.call_activity("notify")

    sim = Sim(v1)
    sim.start()
    result = OrchestrationExecutor(v2, instance_id=INSTANCE).execute(
        sim.history, [OrchestratorStarted(timestamp=T0), completed(0)]
    )
    assert schedules(result) == [(1, "notify", None)]


# --- timers, clocks, replay flag, uuids, custom status ------------------------------------------


def test_timers_take_a_delay_or_a_moment_and_fire_by_id() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> str:
        await ctx.create_timer(timedelta(minutes=5))
        await ctx.create_timer(datetime(2025, 3, 2, 9, 0))  # naive: UTC
        await ctx.create_timer(datetime(2025, 3, 3, 9, 0, tzinfo=UTC))
        return "rang"

    sim = Sim(orchestrator)
    first = sim.start()
    assert first.actions == [CreateTimer(id=0, fire_at=sim.clock + timedelta(minutes=5))]
    assert sim.episode(fired(0)).actions == [
        CreateTimer(id=1, fire_at=datetime(2025, 3, 2, 9, 0, tzinfo=UTC))
    ]
    assert sim.episode(fired(1)).actions == [
        CreateTimer(id=2, fire_at=datetime(2025, 3, 3, 9, 0, tzinfo=UTC))
    ]
    assert output(sim.episode(fired(2))) == "rang"


def test_current_utc_datetime_is_the_latest_orchestrator_started_timestamp() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> list[str]:
        times = [ctx.current_utc_datetime.isoformat()]
        await ctx.call_activity("step")
        times.append(ctx.current_utc_datetime.isoformat())
        await ctx.call_activity("step")
        times.append(ctx.current_utc_datetime.isoformat())
        return times

    sim = Sim(orchestrator)
    sim.start()
    second_started = sim.tick(0) + timedelta(seconds=60)
    sim.episode(completed(0), advance=60)
    last = sim.episode(completed(1), advance=3600)
    assert output(last) == [
        (T0 + timedelta(seconds=1)).isoformat(),
        second_started.isoformat(),
        (second_started + timedelta(seconds=3600)).isoformat(),
    ]


def test_without_orchestrator_started_the_clock_is_the_execution_start() -> None:
    def orchestrator(ctx: OrchestrationContext, _: Any) -> str:
        return ctx.current_utc_datetime.isoformat()

    executor = OrchestrationExecutor(orchestrator, instance_id=INSTANCE)
    result = executor.execute([], [Sim(orchestrator).started(None)])
    assert output(result) == T0.isoformat()


def test_is_replaying_is_true_only_while_past_events_are_replayed() -> None:
    observed: list[bool] = []

    async def orchestrator(ctx: OrchestrationContext, _: Any) -> None:
        observed.append(ctx.is_replaying)
        await ctx.call_activity("one")
        observed.append(ctx.is_replaying)
        await ctx.call_activity("two")
        observed.append(ctx.is_replaying)

    sim = Sim(orchestrator)
    sim.start()
    sim.episode(completed(0))
    observed.clear()
    OrchestrationExecutor(orchestrator, instance_id=INSTANCE).execute(
        sim.history, [OrchestratorStarted(timestamp=T0), completed(1)]
    )
    assert observed == [True, True, False]

    observed.clear()
    cached = OrchestrationExecutor(orchestrator, instance_id=INSTANCE)
    cached.execute([], sim.history[:2])
    assert observed == [False]


def test_new_uuid_is_deterministic_per_instance_step_and_call() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> list[str]:
        ids = [str(ctx.new_uuid()), str(ctx.new_uuid())]
        await ctx.call_activity("step")
        ids.append(str(ctx.new_uuid()))
        return ids

    def run(instance_id: str) -> list[str]:
        sim = Sim(orchestrator, instance_id=instance_id)
        sim.start()
        result: list[str] = output(sim.episode(completed(0)))  # Sim also checks replay gives the same
        return result

    first = run("a")
    assert len(set(first)) == 3
    assert run("a") == first
    assert set(run("b")).isdisjoint(first)


def test_custom_status_is_the_json_of_the_last_value_set() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> None:
        ctx.set_custom_status({"stage": "reserving"})
        await ctx.call_activity("reserve")
        ctx.set_custom_status("shipping")
        await ctx.call_activity("ship")
        ctx.set_custom_status(None)

    sim = Sim(orchestrator)
    assert Sim(hello_cities).start().custom_status is None
    assert from_json(sim.start().custom_status) == {"stage": "reserving"}
    assert sim.episode(completed(0)).custom_status == '"shipping"'
    assert sim.episode(completed(1)).custom_status is None


# --- external events ----------------------------------------------------------------------------


def test_external_events_match_names_case_insensitively_first_in_first_out() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> list[Any]:
        first = ctx.wait_for_external_event("Approval")
        second = ctx.wait_for_external_event("approval")
        return [await first, await second, await ctx.wait_for_external_event("other")]

    sim = Sim(orchestrator)
    waiting(sim.start())
    waiting(sim.episode(raised("APPROVAL", {"by": "ana"})))
    waiting(sim.episode(raised("ApProVaL", {"by": "bo"})))
    assert output(sim.episode(raised("OTHER", 3))) == [{"by": "ana"}, {"by": "bo"}, 3]


def test_events_that_arrive_before_anyone_waits_are_kept_in_order() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> list[Any]:
        await ctx.call_activity("prepare")
        return [await ctx.wait_for_external_event("item") for _ in range(3)]

    sim = Sim(orchestrator)
    sim.start(None, raised("item", 1))
    sim.episode(raised("ITEM", 2), raised("unrelated", 0))
    waiting(sim.episode(completed(0)))
    assert output(sim.episode(raised("item", 3))) == [1, 2, 3]


def test_an_event_with_invalid_json_fails_the_wait_not_the_engine() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> str:
        try:
            await ctx.wait_for_external_event("data")
        except Exception as exc:  # noqa: BLE001 - the test wants to see what arrives
            return type(exc).__name__
        return "parsed"

    sim = Sim(orchestrator)
    sim.start()
    assert (
        output(sim.episode(EventRaised(timestamp=T0, name="data", input="{not json"))) == "SerializationError"
    )


# --- when_all / when_any ------------------------------------------------------------------------


async def fan_out(ctx: OrchestrationContext, cities: list[str]) -> list[str]:
    results: list[str] = await when_all([ctx.call_activity(say_hello, c) for c in cities])
    return results


def test_when_all_fans_out_and_collects_results_in_order() -> None:
    sim = Sim(fan_out)
    first = sim.start(["Tokyo", "Seattle", "London"])
    assert [a.id for a in first.actions] == [0, 1, 2]
    waiting(sim.episode(completed(2, "L")))
    waiting(sim.episode(completed(0, "T")))
    assert output(sim.episode(completed(1, "S"))) == ["T", "S", "L"]


def test_when_all_in_one_episode_with_every_completion() -> None:
    sim = Sim(fan_out)
    sim.start(["a", "b"])
    assert output(sim.episode(completed(1, "B"), completed(0, "A"))) == ["A", "B"]


def test_when_all_fails_with_the_first_failure() -> None:
    sim = Sim(fan_out)
    sim.start(["a", "b", "c"])
    details = failure(sim.episode(completed(0, "A"), failed(2, "c broke"), failed(1, "b broke")))
    assert details.inner_failure is not None
    assert details.inner_failure.error_message == "c broke"


def approval_with_deadline(ctx: OrchestrationContext, _: Any) -> Generator[Task[Any], Any, str]:
    approval = ctx.wait_for_external_event("approval")
    deadline = ctx.create_timer(timedelta(hours=24))
    winner = yield when_any([approval, deadline])
    if winner is approval:
        yield ctx.call_activity("process", approval.get_result())
        return "approved"
    yield ctx.call_activity("escalate")
    return "timed out"


def test_when_any_event_before_timer_and_the_later_timer_is_harmless() -> None:
    sim = Sim(approval_with_deadline)
    first = sim.start()
    assert [type(a) for a in first.actions] == [CreateTimer]
    assert schedules(sim.episode(raised("approval", "ok"))) == [(1, "process", "ok")]
    late_timer = sim.episode(fired(0))
    assert late_timer.actions == []
    waiting(late_timer)
    assert output(sim.episode(completed(1))) == "approved"


def test_when_any_timer_before_event_and_the_later_event_is_harmless() -> None:
    sim = Sim(approval_with_deadline)
    sim.start()
    assert schedules(sim.episode(fired(0))) == [(1, "escalate", None)]
    assert sim.episode(raised("approval", "too late")).actions == []
    assert output(sim.episode(completed(1))) == "timed out"


def test_when_any_both_in_the_same_episode_takes_the_first_event() -> None:
    sim = Sim(approval_with_deadline)
    sim.start()
    assert schedules(sim.episode(fired(0), raised("approval", "ok"))) == [(1, "escalate", None)]


# --- retries ------------------------------------------------------------------------------------


def retrying(policy: RetryPolicy) -> Callable[..., Any]:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> str:
        result: str = await ctx.call_activity(say_hello, "Flaky", retry_policy=policy)
        return result

    return orchestrator


def test_a_failed_attempt_waits_on_a_durable_timer_with_backoff_then_retries() -> None:
    policy = RetryPolicy(
        first_retry_interval=timedelta(seconds=5), max_number_of_attempts=3, backoff_coefficient=2
    )
    sim = Sim(retrying(policy))
    assert schedules(sim.start()) == [(0, "say_hello", "Flaky")]
    first_retry = sim.episode(failed(0))
    assert first_retry.actions == [CreateTimer(id=1, fire_at=sim.clock + timedelta(seconds=5))]
    assert schedules(sim.episode(fired(1))) == [(2, "say_hello", "Flaky")]
    second_retry = sim.episode(failed(2))
    assert second_retry.actions == [CreateTimer(id=3, fire_at=sim.clock + timedelta(seconds=10))]
    assert schedules(sim.episode(fired(3))) == [(4, "say_hello", "Flaky")]
    assert output(sim.episode(completed(4, "Hello Flaky!"))) == "Hello Flaky!"


def test_after_the_last_attempt_the_failure_propagates() -> None:
    policy = RetryPolicy(first_retry_interval=timedelta(seconds=1), max_number_of_attempts=2)
    sim = Sim(retrying(policy))
    sim.start()
    sim.episode(failed(0, "first"))
    sim.episode(fired(1))
    details = failure(sim.episode(failed(2, "second")))
    assert details.inner_failure is not None
    assert details.inner_failure.error_message == "second"


def test_retry_delays_are_capped_by_max_retry_interval() -> None:
    policy = RetryPolicy(
        first_retry_interval=timedelta(seconds=10),
        max_number_of_attempts=5,
        backoff_coefficient=10,
        max_retry_interval=timedelta(seconds=30),
    )
    sim = Sim(retrying(policy))
    sim.start()
    sim.episode(failed(0))
    sim.episode(fired(1))
    assert sim.episode(failed(2)).actions == [CreateTimer(id=3, fire_at=sim.clock + timedelta(seconds=30))]


def test_no_retry_once_retry_timeout_has_passed_since_the_first_attempt() -> None:
    policy = RetryPolicy(
        first_retry_interval=timedelta(seconds=1),
        max_number_of_attempts=10,
        retry_timeout=timedelta(minutes=1),
    )
    sim = Sim(retrying(policy))
    sim.start()
    assert isinstance(sim.episode(failed(0), advance=30).actions[0], CreateTimer)
    sim.episode(fired(1))
    assert failure(sim.episode(failed(2), advance=60)).inner_failure is not None


def test_a_non_retriable_failure_is_not_retried() -> None:
    policy = RetryPolicy(first_retry_interval=timedelta(seconds=1), max_number_of_attempts=10)
    sim = Sim(retrying(policy))
    sim.start()
    assert failure(sim.episode(failed(0, "fatal", is_non_retriable=True))).inner_failure is not None


def test_a_retried_activity_that_is_caught_lets_the_orchestrator_continue() -> None:
    policy = RetryPolicy(first_retry_interval=timedelta(seconds=1), max_number_of_attempts=2)

    async def orchestrator(ctx: OrchestrationContext, _: Any) -> str:
        try:
            await ctx.call_activity("flaky", retry_policy=policy)
        except TaskFailedError:
            await ctx.call_activity("compensate")
        return "compensated"

    sim = Sim(orchestrator)
    sim.start()
    sim.episode(failed(0))
    sim.episode(fired(1))
    assert schedules(sim.episode(failed(2))) == [(3, "compensate", None)]
    assert output(sim.episode(completed(3))) == "compensated"


# --- sub-orchestrations and events to others ----------------------------------------------------


async def child_workflow(ctx: OrchestrationContext, order: Order) -> Receipt:
    raise NotImplementedError  # only its name and return type matter here


def test_sub_orchestrations_get_deterministic_ids_and_typed_results() -> None:
    async def parent(ctx: OrchestrationContext, _: Any) -> list[Any]:
        receipt = await ctx.call_sub_orchestrator(child_workflow, Order("A1", 1))
        named = await ctx.call_sub_orchestrator("child_workflow", instance_id="explicit-child")
        return [type(receipt).__name__, named]

    sim = Sim(parent)
    first = sim.start()
    assert first.actions == [
        CreateSubOrchestration(
            id=0, instance_id=f"{INSTANCE}:0000", name="child_workflow", input='{"id":"A1","quantity":1}'
        )
    ]
    receipt = to_json({"order_id": "A1", "paid_at": T0.isoformat()})
    second = sim.episode(SubOrchestrationInstanceCompleted(timestamp=T0, task_scheduled_id=0, result=receipt))
    assert second.actions == [
        CreateSubOrchestration(id=1, instance_id="explicit-child", name="child_workflow")
    ]
    last = sim.episode(SubOrchestrationInstanceCompleted(timestamp=T0, task_scheduled_id=1, result='"plain"'))
    assert output(last) == ["Receipt", "plain"]


def test_a_failed_sub_orchestration_raises_and_retries_under_a_new_child_id() -> None:
    policy = RetryPolicy(first_retry_interval=timedelta(seconds=1), max_number_of_attempts=2)

    async def parent(ctx: OrchestrationContext, _: Any) -> str:
        try:
            await ctx.call_sub_orchestrator(child_workflow, retry_policy=policy)
        except TaskFailedError as exc:
            return str(exc)
        return "ok"

    child_failure = TaskFailureDetails(error_type="KeyError", error_message="nope")
    sim = Sim(parent)
    sim.start()
    sim.episode(SubOrchestrationInstanceFailed(timestamp=T0, task_scheduled_id=0, failure=child_failure))
    retried = sim.episode(fired(1))
    assert retried.actions == [
        CreateSubOrchestration(id=2, instance_id=f"{INSTANCE}:0002", name="child_workflow")
    ]
    last = sim.episode(
        SubOrchestrationInstanceFailed(timestamp=T0, task_scheduled_id=2, failure=child_failure)
    )
    assert output(last) == "sub-orchestration 'child_workflow' failed: KeyError: nope"


def test_send_event_is_an_action_with_a_sequence_number() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> None:
        ctx.send_event("other-instance", "Ping", {"n": 1})
        await ctx.call_activity("after")
        ctx.send_event("other-instance", "Done")

    sim = Sim(orchestrator)
    assert sim.start().actions == [
        SendEvent(id=0, instance_id="other-instance", name="Ping", data='{"n":1}'),
        ScheduleTask(id=1, name="after"),
    ]
    last = sim.episode(completed(1))
    assert last.actions[0] == SendEvent(id=2, instance_id="other-instance", name="Done")
    assert completion(last).id == 3


# --- lifecycle: continue-as-new, suspend, resume, terminate -------------------------------------


async def counter(ctx: OrchestrationContext, count: int) -> int:
    increment = await ctx.wait_for_external_event("add")
    total = count + int(increment)
    if total >= 10:
        return total
    ctx.continue_as_new(total)
    return -1  # ignored: the instance continues as new


def test_continue_as_new_restarts_with_the_new_input_and_drops_unclaimed_events() -> None:
    sim = Sim(counter)
    sim.start(0)
    result = sim.episode(raised("add", 3), raised("add", 4))
    action = completion(result)
    assert (action.status, action.result, action.carryover_events) == (Status.CONTINUED_AS_NEW, "3", [])
    waiting(sim.continue_as_new(result))
    restarted = sim.history[1]
    assert isinstance(restarted, ExecutionStarted)
    assert (restarted.input, restarted.execution_id) == ("3", "exec-2")
    assert output(sim.episode(raised("add", 7))) == 10


def test_continue_as_new_with_save_events_carries_unclaimed_events_over() -> None:
    async def batcher(ctx: OrchestrationContext, batch: int) -> list[Any]:
        item = await ctx.wait_for_external_event("item")
        if batch == 0:
            ctx.continue_as_new(1, save_events=True)
        return [batch, item]

    sim = Sim(batcher)
    sim.start(0, raised("other", "kept"))
    result = sim.episode(raised("item", "a"), raised("item", "b"), raised("item", "c"))
    action = completion(result)
    assert action.status is Status.CONTINUED_AS_NEW
    assert [(e.name, e.input) for e in action.carryover_events if isinstance(e, EventRaised)] == [
        ("other", '"kept"'),
        ("item", '"b"'),
        ("item", '"c"'),
    ]
    assert output(sim.continue_as_new(result)) == [1, "b"]


def test_continue_as_new_while_waiting_ends_the_run_at_once() -> None:
    async def looper(ctx: OrchestrationContext, n: int) -> None:
        await ctx.call_activity("work", n)
        ctx.continue_as_new(n + 1)
        await ctx.create_timer(timedelta(days=1))  # never reached as a real wait

    sim = Sim(looper)
    sim.start(0)
    result = sim.episode(completed(0))
    assert [type(a) for a in result.actions] == [CreateTimer, CompleteOrchestration]
    assert completion(result).result == "1"
    assert schedules(sim.continue_as_new(result)) == [(0, "work", 1)]


def test_suspended_instances_hold_events_until_resumed_then_apply_them_in_order() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> list[Any]:
        first = await ctx.call_activity("first")
        event = await ctx.wait_for_external_event("go")
        return [first, event]

    sim = Sim(orchestrator)
    sim.start()
    assert sim.episode(ExecutionSuspended(timestamp=T0, input="maintenance")).actions == []
    held = sim.episode(completed(0, "one"), raised("go", "now"))
    assert (held.actions, held.is_complete) == ([], False)
    assert output(sim.episode(ExecutionResumed(timestamp=T0))) == ["one", "now"]


def test_resume_within_the_same_episode_and_records_are_not_held() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> None:
        await ctx.call_activity("first")
        await ctx.call_activity("second")

    sim = Sim(orchestrator)
    sim.start()
    # The activity scheduled before the suspension is in history; replaying it must still check out.
    result = sim.episode(completed(0), ExecutionSuspended(timestamp=T0), ExecutionResumed(timestamp=T0))
    assert schedules(result) == [(1, "second", None)]
    waiting(sim.episode(ExecutionSuspended(timestamp=T0), completed(1)))
    assert completion(sim.episode(ExecutionResumed(timestamp=T0))).status is Status.COMPLETED


def test_terminate_ends_the_run_with_its_output_and_runs_finally_blocks() -> None:
    cleaned_up: list[bool] = []

    async def orchestrator(ctx: OrchestrationContext, _: Any) -> None:
        try:
            await ctx.call_activity("long")
        finally:
            cleaned_up.append(True)

    sim = Sim(orchestrator)
    sim.start()
    cleaned_up.clear()
    result = sim.episode(ExecutionTerminated(timestamp=T0, input='"stopped by ops"'))
    action = completion(result)
    assert (action.status, action.result, action.id) == (Status.TERMINATED, '"stopped by ops"', 1)
    assert cleaned_up == [True, True]  # the cached run and the fresh replay
    late = sim.episode(completed(0), raised("x"), ExecutionTerminated(timestamp=T0))
    assert (late.actions, late.is_complete) == ([], False)


def test_terminate_is_not_held_while_suspended_and_drops_work_of_the_same_episode() -> None:
    sim = Sim(hello_cities)
    sim.start()
    result = sim.episode(
        completed(0, "T"), ExecutionSuspended(timestamp=T0), ExecutionTerminated(timestamp=T0, input=None)
    )
    assert [type(a) for a in result.actions] == [CompleteOrchestration]
    assert completion(result).status is Status.TERMINATED

    sim = Sim(hello_cities)
    sim.start()
    result = sim.episode(completed(0, "T"), ExecutionTerminated(timestamp=T0))
    assert [type(a) for a in result.actions] == [CompleteOrchestration]
    assert completion(result).id == 2


def test_fire_and_forget_work_still_goes_out_with_a_normal_completion() -> None:
    def orchestrator(ctx: OrchestrationContext, _: Any) -> str:
        ctx.call_activity("audit")
        ctx.send_event("other", "done")
        return "bye"

    result = Sim(orchestrator).start()
    assert [type(a) for a in result.actions] == [ScheduleTask, SendEvent, CompleteOrchestration]
    assert [a.id for a in result.actions] == [0, 1, 2]


def test_a_completed_history_replays_to_no_new_actions() -> None:
    sim = Sim(hello_cities)
    sim.start()
    sim.episode(completed(0, "a"))
    sim.episode(completed(1, "b"))
    sim.episode(completed(2, "c"))
    assert isinstance(sim.history[-1], ExecutionCompleted)
    result = sim.episode(completed(2, "duplicate"), raised("late"))
    assert (result.actions, result.is_complete) == ([], False)


# --- odd inputs ---------------------------------------------------------------------------------


def test_duplicate_and_unknown_completions_are_ignored() -> None:
    sim = Sim(hello_cities)
    sim.start()
    assert schedules(sim.episode(completed(0, "T"), completed(0, "again"))) == [(1, "say_hello", "Seattle")]
    quiet = sim.episode(
        completed(0, "third time"),
        completed(99),
        failed(42),
        fired(7),
        fired(1),  # a timer event for an activity's id
        SubOrchestrationInstanceCompleted(timestamp=T0, task_scheduled_id=1, result='"x"'),
        SubOrchestrationInstanceFailed(
            timestamp=T0, task_scheduled_id=5, failure=TaskFailureDetails(error_type="E", error_message="m")
        ),
    )
    assert quiet.actions == []
    assert schedules(sim.episode(completed(1, "S"))) == [(2, "say_hello", "London")]


def test_bookkeeping_events_change_nothing() -> None:
    sim = Sim(hello_cities)
    sim.start()
    result = sim.episode(
        OrchestratorCompleted(timestamp=T0),
        ExecutionRewound(timestamp=T0, reason="why not"),
        ContinueAsNew(timestamp=T0, input='"x"'),
        sim.started('"duplicate start"'),
    )
    assert (result.actions, result.is_complete) == ([], False)


def test_events_before_the_start_wait_for_it() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> Any:
        return await ctx.wait_for_external_event("early")

    sim = Sim(orchestrator)
    waiting(sim.episode(raised("early", "bird")))
    assert output(sim.start()) == "bird"


def test_history_length_counts_past_new_and_actions() -> None:
    executor = OrchestrationExecutor(fan_out, instance_id=INSTANCE)
    sim = Sim(fan_out)
    executor.execute([], [OrchestratorStarted(timestamp=T0), sim.started('["a", "b"]')])
    assert executor.history_length == 2 + 2
    other = OrchestrationExecutor(fan_out, instance_id=INSTANCE)
    history: list[HistoryEvent] = [
        OrchestratorStarted(timestamp=T0),
        sim.started('["a"]'),
        TaskScheduled(timestamp=T0, event_id=0, name="say_hello", input='"a"'),
    ]
    other.execute(history, [OrchestratorStarted(timestamp=T0), completed(0, "A")])
    assert other.history_length == 3 + 2 + 1


# --- cached executor versus full replay ---------------------------------------------------------


def scenario_activities(sim: Sim) -> None:
    sim.start()
    for i, reply in enumerate(["a", "b", "c"]):
        sim.episode(completed(i, reply))


def scenario_retries_and_timers(sim: Sim) -> None:
    sim.start()
    sim.episode(failed(0))
    sim.episode(fired(1))
    sim.episode(completed(2, "ok"))


def scenario_suspend_resume_terminate(sim: Sim) -> None:
    sim.start()
    sim.episode(ExecutionSuspended(timestamp=T0))
    sim.episode(completed(0, "held"))
    sim.episode(ExecutionResumed(timestamp=T0), completed(0, "duplicate"))
    sim.episode(ExecutionTerminated(timestamp=T0, input='"bye"'))


def scenario_race(sim: Sim) -> None:
    sim.start()
    sim.episode(raised("approval", 1), fired(0))
    sim.episode(completed(1))


def scenario_counter(sim: Sim) -> None:
    sim.start(0)
    sim.episode(raised("add", 2))


@dataclass
class Scenario:
    orchestrator: Callable[..., Any]
    play: Callable[[Sim], None]


EQUIVALENCE_SCENARIOS = {
    "async activities": Scenario(hello_cities, scenario_activities),
    "generator activities": Scenario(hello_cities_generator, scenario_activities),
    "retries": Scenario(
        retrying(RetryPolicy(first_retry_interval=timedelta(seconds=3), max_number_of_attempts=3)),
        scenario_retries_and_timers,
    ),
    "suspend, resume, terminate": Scenario(hello_cities, scenario_suspend_resume_terminate),
    "when_any race": Scenario(approval_with_deadline, scenario_race),
    "continue as new": Scenario(counter, scenario_counter),
}


@pytest.mark.parametrize("name", EQUIVALENCE_SCENARIOS)
def test_a_cached_executor_and_a_full_replay_agree_at_every_episode(name: str) -> None:
    scenario = EQUIVALENCE_SCENARIOS[name]
    sim = Sim(scenario.orchestrator)
    scenario.play(sim)  # Sim.episode compares the cached and fresh results of every episode
    # And a replay of the whole final history from scratch lands where the cached one is.
    final = OrchestrationExecutor(scenario.orchestrator, instance_id=INSTANCE)
    assert final.execute(sim.history, []).actions == []
    assert final.history_length == sim.cached.history_length == len(sim.history)


def test_the_equivalence_check_itself_catches_a_divergence() -> None:
    calls: list[int] = []

    async def impure(ctx: OrchestrationContext, _: Any) -> None:
        calls.append(1)
        await ctx.call_activity(f"step-{len(calls)}")  # depends on process state: not replay-safe

    sim = Sim(impure)
    with pytest.raises(AssertionError, match="disagree"):
        sim.start()


def test_non_determinism_error_is_the_documented_type() -> None:
    assert issubclass(NonDeterminismError, Exception)


# --- how results are typed ----------------------------------------------------------------------


T = TypeVar("T")


def generic_activity(ctx: Any, value: T) -> T:
    return value


async def async_activity(ctx: Any, _: Any) -> Order:
    raise NotImplementedError


def unannotated(ctx, value):  # type: ignore[no-untyped-def]
    return value


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (say_hello, str),
        (charge, Receipt),
        (async_activity, Order),
        (hello_cities, list[str]),
        (hello_cities_generator, list[str]),
        (generic_activity, Any),
        (unannotated, Any),
        ("say_hello", Any),
    ],
)
def test_results_are_decoded_with_the_type_the_function_produces(fn: Any, expected: Any) -> None:
    assert result_type_of(fn) == expected


def test_a_generator_sub_orchestrator_result_is_decoded_with_its_generator_return_type() -> None:
    async def parent(ctx: OrchestrationContext, _: Any) -> str:
        greetings = await ctx.call_sub_orchestrator(hello_cities_generator)
        return type(greetings).__name__

    sim = Sim(parent)
    sim.start()
    done = SubOrchestrationInstanceCompleted(timestamp=T0, task_scheduled_id=0, result='["a"]')
    assert output(sim.episode(done)) == "list"


def test_plain_function_orchestrators_can_continue_as_new_and_set_status() -> None:
    def orchestrator(ctx: OrchestrationContext, n: int) -> None:
        ctx.set_custom_status({"n": n})
        ctx.continue_as_new(n + 1)

    result = Sim(orchestrator).start(1)
    assert (completion(result).status, completion(result).result) == (Status.CONTINUED_AS_NEW, "2")
    assert result.custom_status == '{"n":1}'


def test_an_unserializable_custom_status_or_input_raises_in_the_orchestrator() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> list[str]:
        errors = []
        for attempt in (lambda: ctx.set_custom_status(object()), lambda: ctx.call_activity("x", object())):
            try:
                attempt()
            except TypeError as exc:
                errors.append(type(exc).__name__)
        return errors

    result = Sim(orchestrator).start()
    assert output(result) == ["SerializationError", "SerializationError"]
    assert [type(a) for a in result.actions] == [CompleteOrchestration]


def test_a_timer_of_an_earlier_execution_does_not_fire_a_new_one() -> None:
    async def orchestrator(ctx: OrchestrationContext, _: Any) -> str:
        await ctx.create_timer(timedelta(minutes=5))
        return "rang"

    sim = Sim(orchestrator)
    sim.start()
    stale = TimerFired(timestamp=T0, fire_at=T0 - timedelta(days=1), timer_id=0)
    assert sim.episode(stale).actions == []  # same id, another time: not ours
    assert [type(a).__name__ for a in sim.episode(fired(0)).actions] == ["CompleteOrchestration"]
