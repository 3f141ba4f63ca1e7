"""Moving a live task hub SQLite -> PostgreSQL -> SQLite with export files, and carrying on in each.

Phase 1 runs a worker on a SQLite file until every kind of instance sits where it should: completed,
failed, completed with a sub-orchestration, waiting for an event, on a timer, with activities queued,
with an activity leased (the worker stops in the middle of it), suspended, a sub-orchestration waiting
for an event under a waiting parent, and one not started yet (scheduled start). Then the file goes
to PostgreSQL and back; every hop must keep every instance identical. Finally a worker on each
copy carries the running instances to completion, with the outputs the orchestrations compute.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from duratask import (
    ActivityContext,
    DurableTaskClient,
    OrchestrationContext,
    OrchestrationRuntimeStatus,
    Worker,
    when_all,
)
from duratask.history import TaskScheduled, TimerFired
from duratask.storage.base import InstanceDump
from duratask.storage.connect import database_target, open_database_storage
from duratask.storage.export_file import ExportReader, export_to, import_from

Status = OrchestrationRuntimeStatus
TIMER_SECONDS = 5.0
START_DELAY = 5.0

# --- the application ---------------------------------------------------------------------------

#: While set, ``hold`` never returns (it is cancelled when the phase-1 worker stops).
holding = asyncio.Event()
hold_started = asyncio.Event()


def say_hello(ctx: ActivityContext, name: str) -> str:
    return f"Hello {name}!"


async def double(ctx: ActivityContext, x: int) -> int:
    return 2 * x


async def hold(ctx: ActivityContext, _: Any) -> str:
    if holding.is_set():
        hold_started.set()
        await asyncio.sleep(3600)
    return f"released on attempt {ctx.attempt}"


async def greet(ctx: OrchestrationContext, name: str) -> str:
    result: str = await ctx.call_activity(say_hello, name)
    return result


async def fails(ctx: OrchestrationContext, _: Any) -> None:
    raise ValueError("boom")


async def approval(ctx: OrchestrationContext, _: Any) -> dict[str, Any]:
    ctx.set_custom_status("waiting")
    answer = await ctx.wait_for_external_event("approve")
    return {"approved": answer}


async def nap(ctx: OrchestrationContext, seconds: float) -> str:
    await ctx.create_timer(timedelta(seconds=seconds))
    return "woke"


async def fan_out(ctx: OrchestrationContext, n: int) -> int:
    results = await when_all([ctx.call_activity(double, i) for i in range(n)])
    return sum(results)


async def holder(ctx: OrchestrationContext, _: Any) -> str:
    result: str = await ctx.call_activity(hold)
    return result


async def parent(ctx: OrchestrationContext, child: dict[str, str]) -> dict[str, Any]:
    result = await ctx.call_sub_orchestrator(child["name"], child.get("input"), instance_id=child["id"])
    return {"child": result}


def make_worker(connection: str) -> Worker:
    worker = Worker(connection, max_concurrent_activities=1, shutdown_timeout=0.5)
    for orchestrator in (greet, fails, approval, nap, fan_out, holder, parent):
        worker.add_orchestrator(orchestrator)
    for activity in (say_hello, double, hold):
        worker.add_activity(activity)
    return worker


# --- helpers -----------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def export_file(connection: str, path: Path) -> list[InstanceDump]:
    """Export the hub of ``connection`` to ``path``; returns the dumps read back from the file."""
    target = database_target(connection, "test")
    storage = await open_database_storage(target)
    try:
        with path.open("wb") as out:
            await export_to(storage, out, taskhub=target.taskhub, page_size=3)  # several pages
    finally:
        await storage.close()
    with path.open("rb") as stream:
        return [dump for batch in ExportReader(stream, str(path)).batches() for dump in batch]


async def import_file(connection: str, path: Path) -> int:
    storage = await open_database_storage(database_target(connection, "test"))
    try:
        with path.open("rb") as stream:
            outcome = await import_from(storage, ExportReader(stream, str(path)), batch_size=4)
        return outcome.counts.instances
    finally:
        await storage.close()


# --- phase 1: a live hub -------------------------------------------------------------------------


IDS = {
    "greet": "a-greet",
    "fails": "b-fails",
    "parent_done": "c-parent-done",
    "child_done": "c-parent-done:child",
    "holder": "d-holder",
    "fan_out": "e-fan-out",
    "approval": "f-approval",
    "nap": "g-nap",
    "parent": "h-parent",
    "child": "h-parent:child",
    "suspended": "i-suspended",
    "pending": "j-pending",
}


async def build_live_hub(connection: str) -> dict[str, Any]:
    """Runs phase 1; returns facts the later phases check against."""
    holding.set()
    hold_started.clear()
    facts: dict[str, Any] = {}
    async with make_worker(connection), DurableTaskClient(connection) as client:
        schedule = client.schedule_new_orchestration_instance
        await schedule(greet, "Ada", instance_id=IDS["greet"])
        await schedule(fails, instance_id=IDS["fails"])
        await schedule(
            parent, {"name": "greet", "input": "Kid", "id": IDS["child_done"]}, instance_id=IDS["parent_done"]
        )
        for key in ("greet", "fails", "parent_done"):
            await client.wait_for_instance_completion(IDS[key], timeout=15)

        await schedule(holder, instance_id=IDS["holder"])
        await asyncio.wait_for(hold_started.wait(), 15)  # the one activity slot is now taken

        await schedule(fan_out, 3, instance_id=IDS["fan_out"])
        await schedule(approval, instance_id=IDS["approval"])
        await schedule(nap, TIMER_SECONDS, instance_id=IDS["nap"])
        await schedule(parent, {"name": "approval", "id": IDS["child"]}, instance_id=IDS["parent"])
        await schedule(approval, instance_id=IDS["suspended"])
        facts["start_at"] = datetime.now(UTC) + timedelta(seconds=START_DELAY)
        await schedule(greet, "Later", instance_id=IDS["pending"], start_at=facts["start_at"])

        async def settled() -> bool:
            fan = await client.get_orchestration_history(IDS["fan_out"])
            waiting = [await client.get_instance(IDS[k], True) for k in ("approval", "child", "suspended")]
            timer = await client.get_orchestration_history(IDS["nap"])
            return (
                sum(isinstance(e, TaskScheduled) for e in fan) == 3
                and all(m is not None and m.serialized_custom_status == '"waiting"' for m in waiting)
                and any(type(e).__name__ == "TimerCreated" for e in timer)
            )

        await until(settled, "every instance to reach its waiting point")
        await client.suspend_instance(IDS["suspended"], "moving house")

        async def suspended() -> bool:
            meta = await client.get_instance(IDS["suspended"])
            return meta is not None and meta.runtime_status is Status.SUSPENDED

        await until(suspended, "the suspension")
        facts["outputs"] = {
            key: await client.get_instance(IDS[key], True)
            for key in ("greet", "fails", "parent_done", "child_done")
        }
    holding.clear()
    return facts


def check_snapshot(dumps: list[InstanceDump], facts: dict[str, Any]) -> None:
    """The export holds what phase 1 left: the shapes the later phases rely on."""
    by_id = {dump.instance.instance_id: dump for dump in dumps}
    assert sorted(by_id) == sorted(IDS.values())
    status = {key: by_id[instance_id].instance.status for key, instance_id in IDS.items()}
    assert status["greet"] is status["parent_done"] is status["child_done"] is Status.COMPLETED
    assert status["fails"] is Status.FAILED
    assert status["suspended"] is Status.SUSPENDED
    assert status["pending"] is Status.PENDING
    for key in ("holder", "fan_out", "approval", "nap", "parent", "child"):
        assert status[key] is Status.RUNNING, key
    assert [a.name for a in by_id[IDS["fan_out"]].activities] == ["double"] * 3
    (held,) = by_id[IDS["holder"]].activities
    assert held.attempt == 1  # it was running (leased) when the worker stopped
    (timer,) = by_id[IDS["nap"]].inbox
    assert isinstance(timer.event, TimerFired)
    assert by_id[IDS["child"]].instance.parent_instance_id == IDS["parent"]
    assert by_id[IDS["pending"]].inbox[0].visible_at == facts["start_at"]


# --- phase 3: carrying on ----------------------------------------------------------------------------


async def carry_on(connection: str, facts: dict[str, Any]) -> None:
    holding.clear()
    async with make_worker(connection), DurableTaskClient(connection) as client:
        await client.raise_event(IDS["approval"], "approve", "yes")
        await client.raise_event(IDS["child"], "approve", "kid")
        await client.raise_event(IDS["suspended"], "approve", "after the move")
        await client.resume_instance(IDS["suspended"], "moved")

        async def done(key: str) -> Any:
            meta = await client.wait_for_instance_completion(IDS[key], True, timeout=20)
            assert meta is not None, key
            assert meta.runtime_status is Status.COMPLETED, (key, meta.failure_details)
            return json.loads(meta.serialized_output or "null")

        assert await done("approval") == {"approved": "yes"}
        assert await done("parent") == {"child": {"approved": "kid"}}
        assert await done("suspended") == {"approved": "after the move"}
        assert await done("fan_out") == 0 + 2 + 4
        assert await done("holder") == "released on attempt 2"
        assert await done("nap") == "woke"
        assert await done("pending") == "Hello Later!"
        for key, before in facts["outputs"].items():
            after = await client.get_instance(IDS[key], True)
            assert after == before, key
        history = await client.get_orchestration_history(IDS["suspended"])
        kinds = [type(e).__name__ for e in history]
        assert (
            kinds.index("ExecutionSuspended")
            < kinds.index("ExecutionResumed")
            < kinds.index("ExecutionCompleted")
        )


# --- the test ------------------------------------------------------------------------------------------


@pytest.fixture
def pg_hub(pg_url: str) -> Callable[[str], str]:
    def make(label: str) -> str:
        return f"{pg_url}?taskhub=xfer_{label}_{uuid.uuid4().hex[:10]}"

    return make


async def test_a_live_hub_moves_sqlite_to_postgres_and_back_and_carries_on(
    tmp_path: Path, pg_hub: Callable[[str], str]
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    postgres = pg_hub("a")
    back = f"sqlite:///{tmp_path / 'back.db'}"

    facts = await build_live_hub(source)
    exported = await export_file(source, tmp_path / "1.jsonl")
    check_snapshot(exported, facts)

    assert await import_file(postgres, tmp_path / "1.jsonl") == len(IDS)
    assert await export_file(postgres, tmp_path / "2.jsonl") == exported
    assert await import_file(back, tmp_path / "2.jsonl") == len(IDS)
    assert await export_file(back, tmp_path / "3.jsonl") == exported

    # At least the timer and the scheduled start must still lie ahead when the copies carry on.
    assert facts["start_at"] > datetime.now(UTC)
    await carry_on(postgres, facts)
    await carry_on(back, facts)
