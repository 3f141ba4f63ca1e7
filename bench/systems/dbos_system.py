"""DBOS 3.4 on its default SQLite system database (a file in the run's temporary directory).

Idioms, each the faster DBOS option measured for its workload:
- chain3 / latency: plain (sync) workflow and steps, `DBOS.start_workflow` + `handle.get_result()`.
  Measured against async workflows on this harness: same throughput, p50 latency ~18 ms vs ~29 ms.
  The calls block the event loop, which is fine here: nothing else runs on it for DBOS.
- fan-out: an async workflow that creates its n async steps as tasks with `asyncio.gather`
  (DBOS numbers steps when they are created, so the order is deterministic). Child workflows or a
  queue entry per item would each write a workflow row on top of the step row.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from dbos import DBOS, DBOSConfig, WorkflowHandle, WorkflowHandleAsync

from bench.driver import CITIES, Params, WorkloadError


@DBOS.step()
def say_hello(city: str) -> str:
    return f"Hello {city}!"


@DBOS.workflow()
def hello_cities() -> list[str]:
    return [say_hello(city) for city in CITIES]


@DBOS.step()
async def echo_number(index: int) -> int:
    return index


@DBOS.workflow()
async def fan_out_sum(n: int) -> int:
    values = await asyncio.gather(*(echo_number(i) for i in range(n)))
    return sum(values)


@dataclass(frozen=True)
class _BlockingHandle:
    """Marks a handle of a sync workflow (DBOS's handle types are protocols, not checkable)."""

    handle: WorkflowHandle[Any]


class DbosDriver:
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    async def start_chain(self) -> object:
        return _BlockingHandle(DBOS.start_workflow(hello_cities))

    async def start_fanout(self, n: int) -> object:
        return await DBOS.start_workflow_async(fan_out_sum, n)

    async def result(self, handle: object) -> Any:
        if isinstance(handle, _BlockingHandle):
            return handle.handle.get_result()
        workflow = cast(WorkflowHandleAsync[Any], handle)
        try:
            return await asyncio.wait_for(workflow.get_result(), self._timeout)
        except TimeoutError as exc:
            raise WorkloadError(f"workflow {workflow.get_workflow_id()} timed out") from exc

    async def start_waiter(self) -> object:
        raise NotImplementedError("the memory workload is measured for duratask only")

    async def wait_started(self, handle: object) -> None:
        raise NotImplementedError("the memory workload is measured for duratask only")


@asynccontextmanager
async def open_driver(params: Params) -> AsyncIterator[DbosDriver]:
    config: DBOSConfig = {
        "name": "bench",
        # Relative to the run's own temporary directory (the child process works inside it).
        "system_database_url": "sqlite:///dbos.sqlite",
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        yield DbosDriver(params.timeout)
    finally:
        DBOS.destroy()
