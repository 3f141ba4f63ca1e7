"""duratask's Worker and DurableTaskClient over an Endpoint= string, against the OFFICIAL Python
SDK's in-memory sidecar (``durabletask.testing``): a gRPC TaskHubSidecarService that duratask did
not write. Only what that sidecar implements is asserted (it does not, for instance, refuse
events to finished instances or terminate recursively).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from duratask import (
    DurableTaskClient,
    OrchestrationQuery,
    PurgeInstancesFilter,
    Worker,
)
from duratask import (
    OrchestrationRuntimeStatus as S,
)
from tests.e2e import orchestrations as o

testing = pytest.importorskip("durabletask.testing")

T = 20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def sidecar() -> Iterator[str]:
    backend = testing.InMemoryOrchestrationBackend(port=_free_port())
    backend.start()
    try:
        yield f"Endpoint=http://127.0.0.1:{backend._port};TaskHub=default;Authentication=None"
    finally:
        backend.stop(0)


@pytest.fixture
async def client(sidecar: str) -> AsyncIterator[DurableTaskClient]:
    async with o.register_all(Worker(sidecar, shutdown_timeout=2)), DurableTaskClient(sidecar) as c:
        yield c


async def run(client: DurableTaskClient, orchestrator: Any, input: Any = None, **kw: Any) -> Any:
    iid = await client.schedule_new_orchestration_instance(orchestrator, input, **kw)
    return await client.wait_for_instance_completion(iid, True, timeout=T)


@pytest.mark.parametrize("orchestrator", [o.hello_cities, o.hello_cities_gen], ids=["async", "generator"])
async def test_chain(client: DurableTaskClient, orchestrator: Any) -> None:
    meta = await run(client, orchestrator)
    assert meta.runtime_status is S.COMPLETED
    assert meta.read_output_as(list) == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    history = await client.get_orchestration_history(meta.instance_id)
    assert [type(e).__name__ for e in history].count("TaskScheduled") == 3


async def test_fan_out_fan_in(client: DurableTaskClient) -> None:
    meta = await run(client, o.fan_out, 30)
    assert meta.runtime_status is S.COMPLETED and meta.read_output_as(int) == sum(i * 2 for i in range(30))


async def test_external_event_and_custom_status(client: DurableTaskClient) -> None:
    iid = await client.schedule_new_orchestration_instance(o.wait_for_approval)
    started = await client.wait_for_instance_start(iid, timeout=T)
    assert started is not None and started.runtime_status is S.RUNNING
    await client.raise_event(iid, "approval", {"by": "ann"})
    done = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert done is not None and done.read_output_as(dict) == {"by": "ann"}
    assert done.read_custom_status_as(str) == "approved"


async def test_timer_and_when_any(client: DurableTaskClient) -> None:
    timed_out = await run(client, o.event_or_timeout, 0.2)
    assert timed_out.read_output_as(str) == "timeout"
    iid = await client.schedule_new_orchestration_instance(o.event_or_timeout, 30)
    await client.wait_for_instance_start(iid, timeout=T)
    await client.raise_event(iid, "go")
    won = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert won is not None and won.read_output_as(str) == "event"


async def test_scheduled_start_reaches_the_sidecar(client: DurableTaskClient) -> None:
    # This sidecar does not hold instances back; it stamps the first episode with the start time.
    start_at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    iid = await client.schedule_new_orchestration_instance(o.hello_cities, start_at=start_at)
    await client.wait_for_instance_completion(iid, timeout=T)
    first = (await client.get_orchestration_history(iid))[0]
    assert type(first).__name__ == "OrchestratorStarted" and first.timestamp == start_at


async def test_suspend_and_resume(client: DurableTaskClient) -> None:
    iid = await client.schedule_new_orchestration_instance(o.wait_for_approval)
    await client.wait_for_instance_start(iid, timeout=T)
    await client.suspend_instance(iid, "maintenance")
    await _until_status(client, iid, S.SUSPENDED)
    await client.raise_event(iid, "approval", "while-suspended")
    await asyncio.sleep(0.2)
    still = await client.get_instance(iid)
    assert still is not None and still.runtime_status is S.SUSPENDED
    await client.resume_instance(iid, "go on")
    done = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert done is not None and done.read_output_as(str) == "while-suspended"
    kinds = [type(e).__name__ for e in await client.get_orchestration_history(iid)]
    assert "ExecutionSuspended" in kinds and "ExecutionResumed" in kinds


async def test_terminate(client: DurableTaskClient) -> None:
    iid = await client.schedule_new_orchestration_instance(o.wait_for_approval)
    await client.wait_for_instance_start(iid, timeout=T)
    await client.terminate_instance(iid, "stop", recursive=False)
    meta = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert meta is not None and meta.runtime_status is S.TERMINATED and meta.read_output_as(str) == "stop"


async def test_sub_orchestrations_failures_and_continue_as_new(client: DurableTaskClient) -> None:
    parent = await run(client, o.parent, 3)
    assert parent.read_output_as(list) == [sum(i * 2 for i in range(n)) for n in (1, 2, 3)]
    caught = await run(client, o.catches_failure)
    assert caught.read_output_as(str) == "caught ValueError: boom"
    failed = await run(client, o.fails)
    assert failed.runtime_status is S.FAILED and "unhandled boom" in failed.failure_details.error_message
    counted = await run(client, o.counter, 0)
    assert counted.runtime_status is S.COMPLETED and counted.read_output_as(int) == 5


async def test_query_and_purge(client: DurableTaskClient) -> None:
    ids = [f"q-{i}" for i in range(5)]
    for iid in ids:
        await client.schedule_new_orchestration_instance(o.hello_cities, instance_id=iid)
    for iid in ids:
        await client.wait_for_instance_completion(iid, timeout=T)
    seen: list[str] = []
    token = None
    while True:
        page = await client.get_all_instances(
            OrchestrationQuery(instance_id_prefix="q-", page_size=2, continuation_token=token)
        )
        assert len(page.instances) <= 2
        seen += [m.instance_id for m in page.instances]
        token = page.continuation_token
        if token is None:
            break
    assert sorted(seen) == ids
    completed = await client.get_all_instances(OrchestrationQuery(runtime_status=[S.COMPLETED]))
    assert {m.instance_id for m in completed.instances} == set(ids)
    assert all(m.serialized_output is not None for m in completed.instances)
    assert (await client.purge_instance("q-0")).purged_instance_count == 1
    assert await client.get_instance("q-0") is None
    purged = await client.purge_all_instances(PurgeInstancesFilter(runtime_status=[S.COMPLETED]))
    assert purged.purged_instance_count == 4
    assert (await client.get_all_instances()).instances == []


async def test_waits_on_unknown_instances(client: DurableTaskClient) -> None:
    # This sidecar waits out the whole deadline for an instance it does not know: still None.
    assert await client.get_instance("nope") is None
    assert await client.wait_for_instance_completion("nope", timeout=0.3) is None


async def _until_status(client: DurableTaskClient, iid: str, status: S) -> None:
    for _ in range(500):
        meta = await client.get_instance(iid)
        if meta is not None and meta.runtime_status is status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{iid} never reached {status.name}")
