"""The blocking client over the same scenarios, with the worker on its own thread and loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from duratask import (
    InstanceStateError,
    OrchestrationNotFoundError,
    OrchestrationQuery,
    PurgeInstancesFilter,
    SyncDurableTaskClient,
    Worker,
)
from duratask import (
    OrchestrationRuntimeStatus as S,
)

from . import orchestrations as o

T = 20


@pytest.fixture
def running_worker(connection: str) -> Iterator[None]:
    stop = threading.Event()
    ready = threading.Event()

    async def main() -> None:
        async with register_worker(connection):
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.02)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield
    stop.set()
    thread.join(10)


def register_worker(connection: str) -> Worker:
    return o.register_all(Worker(connection, shutdown_timeout=2))


def test_sync_client_full_surface(connection: str, running_worker: None) -> None:
    with SyncDurableTaskClient(connection) as client:
        iid = client.schedule_new_orchestration_instance(o.hello_cities_gen)
        meta = client.wait_for_instance_completion(iid, True, timeout=T)
        assert meta is not None and meta.read_output_as(list) == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]

        waiting = client.schedule_new_orchestration_instance(o.wait_for_approval, instance_id="sync-wait")
        assert client.wait_for_instance_start(waiting, timeout=T) is not None
        client.suspend_instance(waiting, "pause")
        client.raise_event(waiting, "approval", 42)
        client.resume_instance(waiting)
        done = client.wait_for_instance_completion(waiting, True, timeout=T)
        assert done is not None and done.read_output_as(int) == 42

        doomed = client.schedule_new_orchestration_instance(o.wait_for_approval)
        client.wait_for_instance_start(doomed, timeout=T)
        client.terminate_instance(doomed, "bye")
        term = client.wait_for_instance_completion(doomed, True, timeout=T)
        assert term is not None and term.runtime_status is S.TERMINATED

        later = client.schedule_new_orchestration_instance(
            o.hello_cities, start_at=datetime.now(UTC) + timedelta(hours=1)
        )
        assert client.get_instance(later).runtime_status is S.PENDING  # type: ignore[union-attr]
        with pytest.raises(TimeoutError):
            client.wait_for_instance_start(later, timeout=0.2)

        page = client.get_all_instances(OrchestrationQuery(runtime_status=[S.COMPLETED]))
        assert {m.instance_id for m in page.instances} == {iid, waiting}
        with pytest.raises(InstanceStateError):
            client.raise_event(iid, "approval")
        assert client.purge_instance(iid).purged_instance_count == 1
        assert client.purge_all_instances(PurgeInstancesFilter(runtime_status=[S.TERMINATED])).purged_instance_count == 1
        with pytest.raises(OrchestrationNotFoundError):
            client.suspend_instance("missing")
        assert next(type(e).__name__ for e in client.get_orchestration_history(waiting)) in (
            "OrchestratorStarted",
            "ExecutionStarted",
        )
