"""Orchestrations and activities shared by the end-to-end suites (embedded and over gRPC)."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from duratask import (
    ActivityContext,
    OrchestrationContext,
    RetryPolicy,
    TaskFailedError,
    Worker,
    when_all,
    when_any,
)


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"


@dataclass
class Order:
    order_id: UUID
    placed_at: datetime
    size: Size
    quantity: int


@dataclass
class Receipt:
    order_id: UUID
    total: int
    size: Size


def say_hello(ctx: ActivityContext, city: str) -> str:
    return f"Hello {city}!"


async def double(ctx: ActivityContext, x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def fail_always(ctx: ActivityContext, message: str) -> None:
    raise ValueError(message)


_flaky_calls: dict[str, int] = {}


def flaky(ctx: ActivityContext, key: str) -> int:
    """Fails twice per key, then succeeds: exercises retry policies."""
    _flaky_calls[key] = _flaky_calls.get(key, 0) + 1
    if _flaky_calls[key] < 3:
        raise RuntimeError(f"attempt {_flaky_calls[key]} failed")
    return _flaky_calls[key]


def price(ctx: ActivityContext, order: Order) -> Receipt:
    assert isinstance(order, Order), type(order)
    return Receipt(order_id=order.order_id, total=order.quantity * 3, size=order.size)


async def hello_cities(ctx: OrchestrationContext, _: Any) -> list[str]:
    return [await ctx.call_activity(say_hello, c) for c in ("Tokyo", "Seattle", "London")]


def hello_cities_gen(ctx: OrchestrationContext, _: Any):  # type: ignore[no-untyped-def]
    results = []
    for city in ("Tokyo", "Seattle", "London"):
        results.append((yield ctx.call_activity(say_hello, city)))
    return results


async def fan_out(ctx: OrchestrationContext, n: int) -> int:
    values = await when_all([ctx.call_activity(double, i) for i in range(n)])
    return sum(values)


async def wait_for_approval(ctx: OrchestrationContext, _: Any) -> Any:
    ctx.set_custom_status("waiting")
    data = await ctx.wait_for_external_event("approval")
    ctx.set_custom_status("approved")
    return data


async def event_or_timeout(ctx: OrchestrationContext, seconds: float) -> str:
    timer = ctx.create_timer(timedelta(seconds=seconds))
    event = ctx.wait_for_external_event("go")
    winner = await when_any([timer, event])
    return "event" if winner is event else "timeout"


async def sleepy(ctx: OrchestrationContext, seconds: float) -> str:
    await ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=seconds))
    return "woke"


async def parent(ctx: OrchestrationContext, n: int) -> list[int]:
    return await when_all([ctx.call_sub_orchestrator(fan_out, i) for i in range(1, n + 1)])


async def parent_of_waiter(ctx: OrchestrationContext, _: Any) -> Any:
    return await ctx.call_sub_orchestrator(wait_for_approval, None, instance_id=f"{ctx.instance_id}-child")


async def catches_failure(ctx: OrchestrationContext, _: Any) -> str:
    try:
        await ctx.call_activity(fail_always, "boom")
    except TaskFailedError as exc:
        return f"caught {exc.details.error_type}: {exc.details.error_message}"
    return "not reached"


async def fails(ctx: OrchestrationContext, _: Any) -> None:
    await ctx.call_activity(fail_always, "unhandled boom")


async def retries(ctx: OrchestrationContext, key: str) -> int:
    policy = RetryPolicy(first_retry_interval=timedelta(milliseconds=50), max_number_of_attempts=5)
    result: int = await ctx.call_activity(flaky, key, retry_policy=policy)
    return result


async def counter(ctx: OrchestrationContext, n: int) -> int:
    if n < 5:
        ctx.continue_as_new(n + 1)
        return -1
    return n


async def process_order(ctx: OrchestrationContext, order: Order) -> Receipt:
    assert isinstance(order, Order), type(order)
    receipt: Receipt = await ctx.call_activity(price, order)
    return receipt


async def calls_unknown_activity(ctx: OrchestrationContext, _: Any) -> Any:
    return await ctx.call_activity("no_such_activity", 1)


async def uuids(ctx: OrchestrationContext, _: Any) -> list[str]:
    first = str(ctx.new_uuid())
    await ctx.create_timer(timedelta(milliseconds=10))
    return [first, str(ctx.new_uuid())]


async def sends_event(ctx: OrchestrationContext, target: str) -> str:
    ctx.send_event(target, "approval", "from-sibling")
    return "sent"


async def accumulate(ctx: OrchestrationContext, total: int) -> int:
    """Adds the values of "add" events, one per execution, until "stop"."""
    value = await ctx.wait_for_external_event("add")
    if value == "stop":
        return total
    ctx.continue_as_new(total + value, save_events=True)
    return total


async def clashing_child(ctx: OrchestrationContext, taken_id: str) -> str:
    try:
        await ctx.call_sub_orchestrator(wait_for_approval, None, instance_id=taken_id)
    except TaskFailedError as exc:
        return f"refused: {exc.details.error_message}"
    return "not refused"


async def big_custom_status(ctx: OrchestrationContext, n: int) -> str:
    ctx.set_custom_status("s" * n)
    await ctx.create_timer(timedelta(milliseconds=1))
    return "done"


def register_all(worker: Worker) -> Worker:
    for activity in (say_hello, double, fail_always, flaky, price):
        worker.add_activity(activity)
    for orchestrator in (
        hello_cities,
        hello_cities_gen,
        fan_out,
        wait_for_approval,
        event_or_timeout,
        sleepy,
        parent,
        parent_of_waiter,
        catches_failure,
        fails,
        retries,
        counter,
        process_order,
        calls_unknown_activity,
        uuids,
        sends_event,
        accumulate,
        clashing_child,
        big_custom_status,
    ):
        worker.add_orchestrator(orchestrator)
    return worker
