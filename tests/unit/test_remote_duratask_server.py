"""RemoteBackend against `duratask serve` (in this process, loopback): the ugly paths that the
end-to-end suite does not reach, each surfacing as the embedded backend's error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from duratask import (
    DurableTaskClient,
    PayloadTooLargeError,
    UnauthenticatedError,
    Worker,
)
from duratask import (
    OrchestrationRuntimeStatus as S,
)
from duratask import history as h
from duratask.backend.api import ActivityWorkItem, OrchestrationResult, OrchestrationWorkItem
from duratask.backend.remote import RemoteBackend, SchedulerUnavailableError, TaskHubNotFoundError
from duratask.connection import RemoteTarget, parse
from tests.e2e import orchestrations as o

server_app = pytest.importorskip("duratask.server.app")

T = 20


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Any]:
    running = await server_app.start_server(
        storage=f"sqlite:///{tmp_path / 'hub.db'}?max_payload_bytes=1000",
        host="127.0.0.1",
        port=0,
        taskhubs=("default", "orders"),
        auth_token="s3cret",
    )
    yield running
    await running.stop(0)


def endpoint(server: Any, hub: str = "orders", auth: str = "Authentication=Token;Token=s3cret") -> str:
    return f"Endpoint=http://127.0.0.1:{server.port};TaskHub={hub};{auth}"


async def test_credentials_are_required_and_checked(server: Any) -> None:
    for auth in ("Authentication=None", "Authentication=Token;Token=wrong"):
        async with DurableTaskClient(endpoint(server, auth=auth)) as client:
            with pytest.raises(UnauthenticatedError, match="refused the credentials"):
                await client.get_instance("x")
    async with DurableTaskClient(endpoint(server)) as client:
        assert await client.get_instance("x") is None


async def test_task_hubs_are_separate_and_unknown_ones_refused(server: Any) -> None:
    async with (
        DurableTaskClient(endpoint(server, "orders")) as orders,
        DurableTaskClient(endpoint(server, "default")) as default,
    ):
        await orders.schedule_new_orchestration_instance(o.hello_cities, instance_id="only-in-orders")
        assert await orders.get_instance("only-in-orders") is not None
        assert await default.get_instance("only-in-orders") is None
    async with DurableTaskClient(endpoint(server, "nowhere")) as lost:
        with pytest.raises(TaskHubNotFoundError, match="nowhere"):
            await lost.get_instance("x")


async def test_payload_limits_of_the_server(server: Any) -> None:
    conn = endpoint(server)
    async with o.register_all(Worker(conn, shutdown_timeout=2)), DurableTaskClient(conn) as client:
        with pytest.raises(PayloadTooLargeError, match="1000"):
            await client.schedule_new_orchestration_instance(o.hello_cities, "y" * 2000, instance_id="big")
        assert await client.get_instance("big") is None
        iid = await client.schedule_new_orchestration_instance(o.wait_for_approval)
        await client.wait_for_instance_start(iid, timeout=T)
        with pytest.raises(PayloadTooLargeError) as info:
            await client.raise_event(iid, "approval", "z" * 5000)
        assert info.value.limit == 1000
        await client.raise_event(iid, "approval", "ok")
        done = await client.wait_for_instance_completion(iid, True, timeout=T)
        assert done is not None and done.runtime_status is S.COMPLETED and done.read_output_as(str) == "ok"


async def test_message_over_the_servers_grpc_limit(server: Any) -> None:
    # 5 MB exceeds the server's gRPC receive limit (4 MiB) before any payload check runs.
    async with DurableTaskClient(endpoint(server)) as client:
        with pytest.raises(PayloadTooLargeError) as info:
            await client.schedule_new_orchestration_instance(
                o.hello_cities, "x" * 5_000_000, instance_id="huge"
            )
        assert info.value.size > info.value.limit > 0
        assert await client.get_instance("huge") is None


async def test_completions_with_unknown_tokens_are_refused(server: Any) -> None:
    target = parse(endpoint(server))
    assert isinstance(target, RemoteTarget)
    remote = await RemoteBackend.connect(target)
    try:
        await remote.start_orchestration("hello_cities", "i1", None)
        forged = OrchestrationWorkItem(
            instance_id="i1",
            execution_id="",
            name="hello_cities",
            token="forged",
            new_events=[],
            history_length=0,
        )
        assert await remote.complete_orchestrations([(forged, OrchestrationResult(actions=[]))]) == [False]
        activity = ActivityWorkItem(
            instance_id="i1", execution_id="", task_id=0, name="say_hello", input=None, token="forged"
        )
        done = h.TaskCompleted(timestamp=datetime.now(UTC), task_scheduled_id=0, result='"x"')
        assert await remote.complete_activities([(activity, done)]) == [False]
        await remote.abandon_orchestration(forged)  # unknown token: nothing happens, nothing raised
        meta = await remote.get_instance("i1", False)
        assert meta is not None and meta.runtime_status is S.PENDING
    finally:
        await remote.close()


async def test_worker_and_client_outlive_a_server_restart(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'restart.db'}"
    first = await server_app.start_server(storage=storage, host="127.0.0.1", port=0)
    port = first.port
    conn = f"Endpoint=http://127.0.0.1:{port};TaskHub=default;Authentication=None"
    async with o.register_all(Worker(conn, shutdown_timeout=2)), DurableTaskClient(conn) as client:
        before = await client.schedule_new_orchestration_instance(o.hello_cities)
        assert (await client.wait_for_instance_completion(before, timeout=T)) is not None
        waiting = await client.schedule_new_orchestration_instance(o.wait_for_approval)
        await client.wait_for_instance_start(waiting, timeout=T)
        await first.stop(0)
        with pytest.raises(SchedulerUnavailableError):
            await client.get_instance(before)
        second = await server_app.start_server(storage=storage, host="127.0.0.1", port=port)
        try:
            await _until_reachable(client, waiting)
            await client.raise_event(waiting, "approval", "after the restart")
            done = await client.wait_for_instance_completion(waiting, True, timeout=T)
            assert done is not None and done.read_output_as(str) == "after the restart"
            after = await client.schedule_new_orchestration_instance(o.hello_cities)
            meta = await client.wait_for_instance_completion(after, timeout=T)
            assert meta is not None and meta.runtime_status is S.COMPLETED
        finally:
            await second.stop(0)


async def _until_reachable(client: DurableTaskClient, instance_id: str, within: float = 10.0) -> None:
    """The channel finds the restarted scheduler after its reconnect backoff (a few seconds at most)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await client.get_instance(instance_id)
            return
        except SchedulerUnavailableError:
            assert time.monotonic() < deadline, "the client never reconnected"
            await asyncio.sleep(0.1)
