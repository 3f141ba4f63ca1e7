"""The official `durabletask` Python SDK (worker and async client in this process) against a
scheduler server in a process of its own: `duratask serve` or the SDK's in-memory backend.

The orchestrations, the activities and the driver are those of the durabletask system
(bench/systems/durabletask_system.py), so both servers see the very same client and worker.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from durabletask.client import AsyncTaskHubGrpcClient

from bench.driver import Metered, Params, WorkloadError
from bench.systems.durabletask_system import (
    CHILD_STOP_TIMEOUT_S,
    DurableTaskDriver,
    official_worker,
    quiet_logger,
)
from bench.systems.grpc_path import CpuMeter, end_child, free_port, server_process

WORKER_START_TIMEOUT_S = 60.0


class OfficialSdkDriver(Metered, DurableTaskDriver):
    """The durabletask system's driver, counting instances for the CPU figures."""

    def __init__(self, client: AsyncTaskHubGrpcClient, timeout: float, meter: CpuMeter) -> None:
        super().__init__(client, timeout)
        self.meter = meter

    async def run_one(self) -> None:
        """One chain, not counted: to know that the worker takes work."""
        await self.result(await DurableTaskDriver.start_chain(self))


@asynccontextmanager
async def open_official_driver(
    params: Params, server_command: Callable[[int], list[str]], *, worker_apart: bool = False
) -> AsyncIterator[OfficialSdkDriver]:
    """The client here; the worker here too, or with ``worker_apart`` in a process of its own
    (``grpc_official_worker``), whose CPU counts as the SDK's."""
    port = free_port()
    async with server_process(server_command(port), port) as server:
        if worker_apart:
            async with (
                _worker_process(server.address) as pid,
                _client_driver(params, CpuMeter(server, worker_pids=(pid,))) as driver,
            ):
                await driver.run_one()  # the worker is connected: work starts at once
                yield driver
            return
        meter = CpuMeter(server)
        worker = official_worker(server.address)
        worker.start()
        try:
            async with _client_driver(params, meter) as driver:
                yield driver
        finally:
            # stop() joins the worker's threads; keep the event loop free while it does.
            await asyncio.to_thread(worker.stop)


@asynccontextmanager
async def _client_driver(params: Params, meter: CpuMeter) -> AsyncIterator[OfficialSdkDriver]:
    client = AsyncTaskHubGrpcClient(
        host_address=meter.server.address, logger=quiet_logger("durabletask-client")
    )
    async with client:
        yield OfficialSdkDriver(client, params.timeout, meter)


@asynccontextmanager
async def _worker_process(address: str) -> AsyncIterator[int]:
    """``grpc_official_worker`` in a subprocess until the block ends (its standard input closes)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.systems.grpc_official_worker",
        address,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), WORKER_START_TIMEOUT_S)
        if line.strip() != b"READY":
            raise WorkloadError(f"the worker process did not start (exit code {process.returncode})")
        yield process.pid
    finally:
        await end_child(process, CHILD_STOP_TIMEOUT_S)
