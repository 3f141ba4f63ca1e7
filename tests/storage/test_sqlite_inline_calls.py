"""SQLite storage calls that run on the caller's thread when the connection thread is idle
(reads and writes that need no sync): they must never stall the event loop on another
process's write lock, and must give the same results as calls through the thread."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from duratask.storage.sqlite import SqliteStorage

from .builders import LONG, activity, commit_of, create, lease_only, message, raised, running


async def test_a_write_lock_held_by_another_process_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    storage = SqliteStorage(str(path))
    await storage.open()
    try:
        await create(storage, "a")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process writing, for a while
        lease = asyncio.create_task(storage.lease_orchestrations(10, LONG))  # a write with no sync

        began = time.monotonic()
        await asyncio.sleep(0.2)
        assert time.monotonic() - began < 1.0  # the loop kept running
        assert not lease.done()  # the lease waits, on the storage thread, for the lock

        other.execute("COMMIT")
        other.close()
        (held,) = await asyncio.wait_for(lease, 10)
        assert held.instance.instance_id == "a"
        assert await storage.get_instance("a") is not None  # a read, with the thread idle again
    finally:
        await storage.close()


async def test_inline_and_queued_calls_interleave_consistently(tmp_path: Path) -> None:
    storage = SqliteStorage(str(tmp_path / "mixed.db"))
    await storage.open()
    try:
        for n in range(20):
            await running(storage, f"i{n}")
        # Many concurrent callers: some find the thread idle and run inline, the rest queue.
        await asyncio.gather(*(storage.enqueue([message(f"i{n}", raised("go"))]) for n in range(20)))
        leases = await asyncio.gather(*(storage.lease_orchestrations(1, LONG) for _ in range(25)))
        held = [lease for batch in leases for lease in batch]
        assert sorted(lease.instance.instance_id for lease in held) == sorted(f"i{n}" for n in range(20))
        applied = await asyncio.gather(
            *(
                storage.commit_orchestrations(
                    [
                        commit_of(
                            lease,
                            activities=[
                                activity(
                                    lease.instance.instance_id, 0, execution_id=lease.instance.execution_id
                                )
                            ],
                        )
                    ]
                )
                for lease in held
            )
        )
        assert applied == [[True]] * 20
        activities = await asyncio.gather(*(storage.lease_activities(1, LONG) for _ in range(25)))
        assert sum(len(batch) for batch in activities) == 20
        assert await storage.lease_orchestrations(10, LONG) == []
        await create(storage, "late")
        assert (await lease_only(storage)).instance.instance_id == "late"
    finally:
        await storage.close()
