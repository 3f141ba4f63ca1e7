"""How fast ``duratask export`` / ``import`` move instances: SQLite -> file -> PostgreSQL -> file.

    .venv/bin/python -m bench.transfer [--instances 10000] [--postgres URL]

Without ``--postgres`` a throw-away server is started (tests/pgserver.py). The instances are
synthetic but shaped like real ones: 90% completed (a three-activity orchestration: 12 history
events), 10% running (5 history events, an event and a timer waiting, two queued activities).
Prints seconds, instances per second and the process's peak memory after each step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from duratask import history as h
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.storage.base import InstanceDump, InstanceRecord, PendingActivity, PendingMessage, Storage
from duratask.storage.export_file import ExportReader, export_to, import_from
from duratask.storage.postgres import PostgresStorage
from duratask.storage.sqlite import SqliteStorage


def synthetic(n: int) -> InstanceDump:
    now = datetime.now(UTC)
    instance_id = f"order-{n:08d}"
    execution_id = uuid.uuid4().hex
    payload = json.dumps({"order_id": instance_id, "items": [1, 2, 3], "customer": "someone@example.com"})
    running = n % 10 == 0
    started = h.ExecutionStarted(
        timestamp=now, name="process_order", instance_id=instance_id, execution_id=execution_id, input=payload
    )
    history: list[h.HistoryEvent] = [h.OrchestratorStarted(timestamp=now), started]
    history += [h.TaskScheduled(timestamp=now, event_id=i, name="step", input=payload) for i in range(3)]
    inbox: list[PendingMessage] = []
    activities: list[PendingActivity] = []
    if running:
        fire_at = now + timedelta(days=1)
        inbox = [
            PendingMessage(visible_at=fire_at, event=h.TimerFired(timestamp=now, fire_at=fire_at, timer_id=3)),
            PendingMessage(visible_at=now, event=h.EventRaised(timestamp=now, name="approve", input='"yes"')),
        ]
        activities = [
            PendingActivity(execution_id=execution_id, task_id=i, name="step", input=payload, created_at=now)
            for i in range(2)
        ]
    else:
        history += [h.OrchestratorStarted(timestamp=now)]
        history += [h.TaskCompleted(timestamp=now, task_scheduled_id=i, result='"ok"') for i in range(3)]
        history += [
            h.ExecutionCompleted(timestamp=now, status=Status.COMPLETED, result='"done"'),
            h.OrchestratorCompleted(timestamp=now),
        ]
        history += [h.OrchestratorCompleted(timestamp=now)]
    record = InstanceRecord(
        instance_id=instance_id,
        name="process_order",
        execution_id=execution_id,
        status=Status.RUNNING if running else Status.COMPLETED,
        created_at=now,
        last_updated_at=now,
        input=payload,
        output=None if running else '"done"',
        completed_at=None if running else now,
    )
    return InstanceDump(instance=record, history=history, inbox=inbox, activities=activities)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def timed(label: str, count: int, step: object) -> None:
    started = time.perf_counter()
    await step  # type: ignore[misc]
    seconds = time.perf_counter() - started
    print(f"{label:<34} {seconds:7.2f} s  {count / seconds:9,.0f} instances/s  peak RSS {peak_mb():6.0f} MB")


async def export_file(storage: Storage, path: Path, hub: str) -> None:
    with path.open("wb") as out:
        await export_to(storage, out, taskhub=hub)


async def import_file(storage: Storage, path: Path) -> None:
    with path.open("rb") as stream:
        await import_from(storage, ExportReader(stream, str(path)))


async def main(instances: int, postgres_url: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="duratask-transfer-bench-"))
    source = SqliteStorage(str(workdir / "source.db"))
    await source.open()
    batch = 1000
    for start in range(0, instances, batch):  # seeding: not timed
        await source.import_instances([synthetic(n) for n in range(start, min(start + batch, instances))])
    print(f"{instances:,} instances ({instances // 10:,} running); files in {workdir}")

    hub = f"bench_{uuid.uuid4().hex[:8]}"
    target = PostgresStorage(postgres_url, hub)
    await target.open()
    back = SqliteStorage(str(workdir / "back.db"))
    await back.open()
    try:
        await timed("export SQLite -> file", instances, export_file(source, workdir / "a.jsonl", "default"))
        size = (workdir / "a.jsonl").stat().st_size
        print(f"{'':<34} file: {size / 1e6:.1f} MB, {size / instances:,.0f} bytes per instance")
        await timed("import file -> PostgreSQL", instances, import_file(target, workdir / "a.jsonl"))
        await timed("export PostgreSQL -> file", instances, export_file(target, workdir / "b.jsonl", hub))
        await timed("import file -> SQLite", instances, import_file(back, workdir / "b.jsonl"))
    finally:
        await source.close()
        await target.close()
        await back.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--postgres", help="URL of a PostgreSQL database (default: a throw-away server)")
    args = parser.parse_args()
    url = args.postgres
    if url is None:
        from tests.pgserver import session_database_url

        url = session_database_url()
    asyncio.run(main(args.instances, url))
