"""duratask embedded on a SQLite file (the durable default), worker and client in this process.

Written against the public API of SPEC.md sections 2-3 only. Until the SDK exists, importing it
fails and the run is reported as "not available".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from bench.driver import CITIES, EVENT_NAME, Params, SystemUnavailable, WorkloadError

if TYPE_CHECKING:
    from duratask import DurableTaskClient, Worker

# Relative to the run's own temporary directory (the child process works inside it).
CONNECTION_STRING = "sqlite:///duratask.db"


def _build_worker(connection_string: str) -> Worker:
    from duratask import ActivityContext, OrchestrationContext, Worker, when_all

    worker = Worker(connection_string)

    @worker.activity
    def say_hello(ctx: ActivityContext, city: str) -> str:
        return f"Hello {city}!"

    @worker.orchestrator
    async def hello_cities(ctx: OrchestrationContext, _: Any) -> list[str]:
        return [await ctx.call_activity(say_hello, city) for city in CITIES]

    @worker.activity
    def echo_number(ctx: ActivityContext, index: int) -> int:
        return index

    @worker.orchestrator
    async def fan_out_sum(ctx: OrchestrationContext, n: int) -> int:
        values = await when_all([ctx.call_activity(echo_number, i) for i in range(n)])
        return sum(values)

    @worker.orchestrator
    async def wait_for_go(ctx: OrchestrationContext, _: Any) -> Any:
        return await ctx.wait_for_external_event(EVENT_NAME)

    return worker


class DurataskDriver:
    def __init__(self, client: DurableTaskClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def start_chain(self) -> object:
        return await self._client.schedule_new_orchestration_instance("hello_cities")

    async def start_fanout(self, n: int) -> object:
        return await self._client.schedule_new_orchestration_instance("fan_out_sum", n)

    async def result(self, handle: object) -> Any:
        from duratask import OrchestrationRuntimeStatus

        assert isinstance(handle, str)
        try:
            meta = await self._client.wait_for_instance_completion(
                handle, get_inputs_and_outputs=True, timeout=self._timeout
            )
        except TimeoutError as exc:
            raise WorkloadError(f"instance {handle} timed out") from exc
        if meta is None or meta.runtime_status != OrchestrationRuntimeStatus.COMPLETED:
            details = meta.failure_details if meta else "not found"
            raise WorkloadError(f"instance {handle} did not complete: {details}")
        return None if meta.serialized_output is None else json.loads(meta.serialized_output)

    async def start_waiter(self) -> object:
        return await self._client.schedule_new_orchestration_instance("wait_for_go")

    async def wait_started(self, handle: object) -> None:
        assert isinstance(handle, str)
        meta = await self._client.wait_for_instance_start(handle, timeout=self._timeout)
        if meta is None:
            raise WorkloadError(f"instance {handle} not found")


@asynccontextmanager
async def open_driver(params: Params) -> AsyncIterator[DurataskDriver]:
    try:
        from duratask import DurableTaskClient

        worker = _build_worker(CONNECTION_STRING)
    except (ImportError, AttributeError) as exc:
        raise SystemUnavailable(f"duratask SDK not available yet ({type(exc).__name__}: {exc})") from exc
    async with worker, DurableTaskClient(CONNECTION_STRING) as client:
        yield DurataskDriver(client, params.timeout)
