"""The official `durabletask` Python SDK (worker and async client in this process) against a
scheduler server in a process of its own: `duratask serve` or the SDK's in-memory backend.

The orchestrations, the activities and the driver are those of the durabletask system
(bench/systems/durabletask_system.py), so both servers see the very same client and worker.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from durabletask.client import AsyncTaskHubGrpcClient
from durabletask.worker import TaskHubGrpcWorker

from bench.driver import Params
from bench.systems.durabletask_system import (
    DurableTaskDriver,
    echo_number,
    fan_out_sum,
    hello_cities,
    say_hello,
)
from bench.systems.grpc_path import CpuMeter, free_port, server_process


def _quiet_logger(name: str) -> logging.Logger:
    # The SDK's default INFO handler writes a line per work item.
    logger = logging.getLogger(name)
    logger.setLevel(logging.WARNING)
    logger.addHandler(logging.StreamHandler(sys.stderr))
    return logger


class OfficialSdkDriver(DurableTaskDriver):
    """The durabletask system's driver, counting instances for the CPU figures."""

    def __init__(self, client: AsyncTaskHubGrpcClient, timeout: float, meter: CpuMeter) -> None:
        super().__init__(client, timeout)
        self._meter = meter

    async def start_chain(self) -> object:
        self._meter.count_instance()
        return await super().start_chain()

    async def start_fanout(self, n: int) -> object:
        self._meter.count_instance()
        return await super().start_fanout(n)

    def extra_metrics(self) -> dict[str, float]:
        return self._meter.metrics()


@asynccontextmanager
async def open_official_driver(
    params: Params, server_command: Callable[[int], list[str]]
) -> AsyncIterator[OfficialSdkDriver]:
    port = free_port()
    async with server_process(server_command(port), port) as server:
        meter = CpuMeter(server)
        worker = TaskHubGrpcWorker(host_address=server.address, logger=_quiet_logger("durabletask-worker"))
        for orchestrator in (hello_cities, fan_out_sum):
            worker.add_orchestrator(orchestrator)
        for activity in (say_hello, echo_number):
            worker.add_activity(activity)
        worker.start()
        try:
            client = AsyncTaskHubGrpcClient(
                host_address=server.address, logger=_quiet_logger("durabletask-client")
            )
            async with client:
                yield OfficialSdkDriver(client, params.timeout, meter)
        finally:
            # stop() joins the worker's threads; keep the event loop free while it does.
            await asyncio.to_thread(worker.stop)
