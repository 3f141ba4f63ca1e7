"""duratask on PostgreSQL: the async client in this process, the worker in N processes of its own.

Each run gets a fresh database on the benchmark's PostgreSQL server (bench/pg.py: the server the
runner started, else one of this run's own, durable either way). The client opens first, so the
schema exists before the workers start; the workloads start only once every worker process has
said it runs, so that N processes share the work from the first instance on.

Besides the workloads' figures, the driver reports CPU per instance started (warm-up included):
of the worker processes together, of this process (the client), and of the PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from bench.driver import Metered, Params, SystemUnavailable, WorkloadError
from bench.pg import CpuMeter, Database, fresh_database
from bench.systems.duratask_system import DurataskDriver
from bench.systems.grpc_path import end_child
from tests.pgcluster import PostgresUnavailable

if TYPE_CHECKING:
    from duratask import DurableTaskClient

WORKER_START_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 30.0


class PostgresDurataskDriver(Metered, DurataskDriver):
    """The embedded system's driver (client calls only), counting instances for the CPU figures."""

    def __init__(
        self, client: DurableTaskClient, timeout: float, meter: CpuMeter, database: Database
    ) -> None:
        super().__init__(client, timeout)
        self.meter = meter
        self._workers = len(meter.worker_pids)
        self._fsync = database.settings.get("fsync") == "on"

    def more_metrics(self) -> dict[str, float]:
        return {"worker_processes": float(self._workers), "pg_fsync_on": float(self._fsync)}


async def _wait_ready(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), WORKER_START_TIMEOUT_S)
    except TimeoutError as exc:
        raise WorkloadError(
            f"worker process {process.pid} not ready in {WORKER_START_TIMEOUT_S:.0f} s"
        ) from exc
    if line.decode().strip() != "ready":
        raise WorkloadError(
            f"worker process {process.pid} exited before it ran (code {await process.wait()})"
        )


@asynccontextmanager
async def worker_processes(url: str, count: int) -> AsyncIterator[list[int]]:
    """`count` worker processes on `url`, all running; yields their pids. Their logs go to our stderr."""
    processes: list[asyncio.subprocess.Process] = []
    try:
        command = [sys.executable, "-m", "bench.systems.postgres_worker", url]
        for _ in range(count):
            processes.append(
                await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=sys.stderr
                )
            )
        await asyncio.gather(*(_wait_ready(process) for process in processes))
        yield [process.pid for process in processes]
    finally:
        await asyncio.gather(*(end_child(process, WORKER_STOP_TIMEOUT_S) for process in processes))


@asynccontextmanager
async def open_multiprocess_driver(params: Params, workers: int) -> AsyncIterator[PostgresDurataskDriver]:
    try:
        from duratask import DurableTaskClient
    except ImportError as exc:
        raise SystemUnavailable(f"duratask SDK not available ({exc})") from exc
    try:
        with fresh_database("duratask") as database:
            async with (
                DurableTaskClient(database.url) as client,
                worker_processes(database.url, workers) as pids,
            ):
                meter = CpuMeter(pids, database.server_pid)
                yield PostgresDurataskDriver(client, params.timeout, meter, database)
    except PostgresUnavailable as exc:
        raise SystemUnavailable(str(exc)) from exc
