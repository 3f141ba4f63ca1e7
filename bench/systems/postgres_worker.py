"""One duratask worker process on PostgreSQL, for the multi-process systems (postgres_duratask.py).

    python -m bench.systems.postgres_worker postgresql://user@host:port/db

Registers the benchmark's orchestrations and activities (those of the embedded duratask system),
runs the worker, writes `ready` on standard output once it runs, and stops cleanly when its
standard input closes.
"""

from __future__ import annotations

import asyncio
import sys

from bench.systems.duratask_system import _build_worker

READY_LINE = "ready"


async def run(url: str) -> None:
    worker = _build_worker(url)
    async with worker:
        print(READY_LINE, flush=True)
        await asyncio.to_thread(sys.stdin.buffer.read)  # returns at end of file: the parent is done


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1]))
