"""The official `durabletask` 1.12 Python SDK against its in-memory gRPC sidecar.

The sidecar runs in a subprocess (bench/systems/durabletask_sidecar.py); the official
TaskHubGrpcWorker (default concurrency options) and the async client run in this process.
Loggers are set to WARNING: the SDK's default INFO handler writes a line per work item.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from typing import Any

from durabletask import task
from durabletask.client import AsyncTaskHubGrpcClient, OrchestrationStatus
from durabletask.worker import TaskHubGrpcWorker

from bench.driver import CITIES, Params, WorkloadError
from bench.systems.grpc_path import end_child, free_port

SIDECAR_START_TIMEOUT_S = 30.0
CHILD_STOP_TIMEOUT_S = 10.0
# The sidecar is a sync gRPC server with 10 threads; gRPC core keeps at most ~1000 requests pending
# for it (grpc.server.max_pending_requests) and beyond that resets the connection ("GOAWAY ...
# Cancelling all calls"), which 2,000 concurrent starts trigger. Keeping fewer starts in flight
# than that changes nothing else: measured throughput is the same with 200, 500 or 1000 in flight.
MAX_STARTS_IN_FLIGHT = 500


def say_hello(ctx: task.ActivityContext, city: str) -> str:
    return f"Hello {city}!"


def hello_cities(ctx: task.OrchestrationContext, _: Any) -> Generator[task.Task[Any], Any, list[str]]:
    greetings: list[str] = []
    for city in CITIES:
        greetings.append((yield ctx.call_activity(say_hello, input=city)))
    return greetings


def echo_number(ctx: task.ActivityContext, index: int) -> int:
    return index


def fan_out_sum(ctx: task.OrchestrationContext, n: int) -> Generator[task.Task[Any], Any, int]:
    values = yield task.when_all([ctx.call_activity(echo_number, input=i) for i in range(n)])
    return sum(values)


def quiet_logger(name: str) -> logging.Logger:
    """The SDK's logger at WARNING: its default INFO handler writes a line per work item."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.WARNING)
    logger.addHandler(logging.StreamHandler(sys.stderr))
    return logger


class DurableTaskDriver:
    def __init__(self, client: AsyncTaskHubGrpcClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._start_slots = asyncio.Semaphore(MAX_STARTS_IN_FLIGHT)

    async def start_chain(self) -> object:
        async with self._start_slots:
            return await self._client.schedule_new_orchestration(hello_cities)

    async def start_fanout(self, n: int) -> object:
        async with self._start_slots:
            return await self._client.schedule_new_orchestration(fan_out_sum, input=n)

    async def result(self, handle: object) -> Any:
        assert isinstance(handle, str)
        try:
            state = await self._client.wait_for_orchestration_completion(handle, timeout=self._timeout)
        except TimeoutError as exc:
            raise WorkloadError(f"instance {handle} timed out") from exc
        if state is None or state.runtime_status != OrchestrationStatus.COMPLETED:
            details = state.failure_details if state else "not found"
            raise WorkloadError(f"instance {handle} did not complete: {details}")
        return state.get_output()

    async def start_waiter(self) -> object:
        raise NotImplementedError("the memory workload is measured for duratask only")

    async def wait_started(self, handle: object) -> None:
        raise NotImplementedError("the memory workload is measured for duratask only")


@asynccontextmanager
async def _sidecar() -> AsyncIterator[str]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.systems.durabletask_sidecar",
        str(port),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), SIDECAR_START_TIMEOUT_S)
        if line.strip() != b"READY":
            raise WorkloadError(f"durabletask sidecar did not start (said {line!r})")
        yield f"localhost:{port}"
    finally:
        await end_child(process, CHILD_STOP_TIMEOUT_S)


def official_worker(address: str) -> TaskHubGrpcWorker:
    """The official worker (default concurrency options) with the benchmark's orchestrations and
    activities, not started."""
    worker = TaskHubGrpcWorker(host_address=address, logger=quiet_logger("durabletask-worker"))
    for orchestrator in (hello_cities, fan_out_sum):
        worker.add_orchestrator(orchestrator)
    for activity in (say_hello, echo_number):
        worker.add_activity(activity)
    return worker


@asynccontextmanager
async def open_driver(params: Params) -> AsyncIterator[DurableTaskDriver]:
    async with _sidecar() as address:
        worker = official_worker(address)
        worker.start()
        try:
            client = AsyncTaskHubGrpcClient(host_address=address, logger=quiet_logger("durabletask-client"))
            async with client:
                yield DurableTaskDriver(client, params.timeout)
        finally:
            # stop() joins the worker's threads; keep the event loop free while it does.
            await asyncio.to_thread(worker.stop)
