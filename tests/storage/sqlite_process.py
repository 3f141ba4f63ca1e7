"""A second process on a test's SQLite file (run as a script by test_sqlite.py; not a test module).

python sqlite_process.py lease PATH   # after "go" on stdin: lease and complete instances until none is left
python sqlite_process.py create PATH  # create instances forever, printing each id once created
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

import msgspec

from duratask.history import ExecutionStarted
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.storage.base import (
    InstanceFilter,
    InstanceRecord,
    NewInstance,
    OrchestrationCommit,
    OrchestrationLease,
    Storage,
)
from duratask.storage.sqlite import SqliteStorage


async def lease_until_done(storage: SqliteStorage, out: list[str]) -> None:
    """Lease, then complete what was leased, until no instance is pending; ``out`` gets the completed ids."""
    pending = InstanceFilter(statuses=[Status.PENDING])
    while True:
        leases = await storage.lease_orchestrations(3, 60)
        if not leases:
            if not await storage.query_instances(pending, 1, None):
                return
            await asyncio.sleep(0.001)
            continue
        await complete_leased(storage, leases, out)


async def complete_leased(storage: Storage, leases: list[OrchestrationLease], out: list[str]) -> None:
    """Complete the leased instances (each lease must still hold); ``out`` gets their ids. Any
    storage: the PostgreSQL concurrency test completes its leases with it too."""
    commits = [
        OrchestrationCommit(
            token=lease.token,
            instance=msgspec.structs.replace(lease.instance, status=Status.COMPLETED),
            history_append=lease.new_events,
        )
        for lease in leases
    ]
    for lease, ok in zip(leases, await storage.commit_orchestrations(commits), strict=True):
        if not ok:
            raise AssertionError(f"lost the lease of {lease.instance.instance_id}")
        out.append(lease.instance.instance_id)


async def create_forever(storage: SqliteStorage) -> None:
    n = 0
    while True:
        now = datetime.now(UTC)
        instance_id = f"k{n}"
        record = InstanceRecord(
            instance_id=instance_id,
            name="o",
            execution_id="e",
            status=Status.PENDING,
            created_at=now,
            last_updated_at=now,
        )
        started = ExecutionStarted(timestamp=now, name="o", instance_id=instance_id, execution_id="e")
        await storage.create_instance(NewInstance(record=record, started=started, visible_at=now))
        print(instance_id, flush=True)  # only after the commit returned
        n += 1


async def main(mode: str, path: str) -> None:
    storage = SqliteStorage(path)
    await storage.open()
    try:
        if mode == "lease":
            print("ready", flush=True)
            sys.stdin.readline()
            done: list[str] = []
            await lease_until_done(storage, done)
            print("\n".join(done), flush=True)
        else:
            await create_forever(storage)
    finally:
        await storage.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
