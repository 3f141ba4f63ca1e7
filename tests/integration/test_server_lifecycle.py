"""`duratask serve` as a process and a gate: credentials, task hubs, bad bytes, oversized messages,
unsupported RPCs, and a clean stop on SIGTERM that hands unfinished work back."""

from __future__ import annotations

import asyncio
import inspect
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from durabletask import client as dt_client
from durabletask import task
from durabletask import worker as dt_worker
from durabletask.client import OrchestrationStatus

from duratask.errors import ConnectionStringError
from duratask.protocol import pb, pb_grpc
from duratask.server.app import serve, start_server, storage_for_hub
from tests.compat.serverlib import RawWorker, ServerProcess, ServerThread, free_port, quiet_logger


def hello(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello {name}!"


def greet(ctx: task.OrchestrationContext, name: str) -> Any:
    return (yield ctx.call_activity(hello, input=name))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    running = ServerThread(storage=f"sqlite:///{tmp_path / 'serve.db'}", max_message_bytes=64 * 1024)
    yield running
    running.stop()


@pytest.fixture
async def stub(server: ServerThread) -> AsyncIterator[Any]:
    channel = grpc.aio.insecure_channel(server.address)
    yield pb_grpc.TaskHubSidecarServiceStub(channel)
    await channel.close()


async def refused(call: Any, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    details = error.value.details() or ""
    for word in words:
        assert word in details, details
    return details


async def still_serving(stub: Any) -> None:
    response = await stub.GetInstance(pb.GetInstanceRequest(instanceId="anyone"))
    assert response.exists is False


# --- credentials and task hubs -----------------------------------------------------------------


def test_auth_token_is_required(tmp_path: Path) -> None:
    server = ServerThread(storage=f"sqlite:///{tmp_path / 'auth.db'}", auth_token="s3cret")
    anonymous = dt_client.TaskHubGrpcClient(host_address=server.address, logger=quiet_logger("c"))
    wrong = dt_client.TaskHubGrpcClient(
        host_address=server.address, metadata=[("authorization", "Bearer nope")], logger=quiet_logger("c")
    )
    bearer = [("authorization", "Bearer s3cret")]
    client = dt_client.TaskHubGrpcClient(
        host_address=server.address, metadata=bearer, logger=quiet_logger("c")
    )
    worker = dt_worker.TaskHubGrpcWorker(
        host_address=server.address, metadata=bearer, logger=quiet_logger("w")
    )
    worker.add_orchestrator(greet)
    worker.add_activity(hello)
    worker.start()
    try:
        for unauthorised in (anonymous, wrong):
            with pytest.raises(grpc.RpcError) as error:
                unauthorised.get_orchestration_state("x")
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "Bearer" in (error.value.details() or "")
        instance_id = client.schedule_new_orchestration(greet, input="token")
        state = client.wait_for_orchestration_completion(instance_id, timeout=30)
        assert state.runtime_status == OrchestrationStatus.COMPLETED
        assert state.get_output() == "Hello token!"
    finally:
        worker.stop()
        for c in (anonymous, wrong, client):
            c.close()
        server.stop()


async def test_unauthenticated_work_item_streams_are_refused(tmp_path: Path) -> None:
    server = ServerThread(storage=f"sqlite:///{tmp_path / 'auth.db'}", auth_token="s3cret")
    try:
        async with RawWorker(server.address) as worker:
            await worker.connect()
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await worker.next(timeout=5)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with RawWorker(server.address, metadata=(("authorization", "Bearer s3cret"),)) as worker:
            await worker.connect()
            await worker.nothing_for(0.2)
    finally:
        server.stop()


async def test_task_hub_comes_from_metadata(server: ServerThread, stub: Any) -> None:
    await stub.StartInstance(pb.CreateInstanceRequest(name="o", instanceId="in-default"))
    explicit = await stub.GetInstance(
        pb.GetInstanceRequest(instanceId="in-default"), metadata=(("taskhub", "default"),)
    )
    assert explicit.exists  # no metadata and `taskhub: default` are the same hub
    await refused(
        stub.GetInstance(
            pb.GetInstanceRequest(instanceId="in-default"), metadata=(("taskhub", "elsewhere"),)
        ),
        grpc.StatusCode.NOT_FOUND,
        "'elsewhere' is not served",
        "default",
    )


# --- bad bytes and bad messages ----------------------------------------------------------------


async def test_garbage_bytes_are_invalid_argument(server: ServerThread, stub: Any) -> None:
    channel = grpc.aio.insecure_channel(server.address)
    try:
        for method in ("StartInstance", "CompleteOrchestratorTask", "RaiseEvent"):
            raw = channel.unary_unary(f"/TaskHubSidecarService/{method}")
            await refused(
                raw(b"\xff\xff\xff\xff\x0f garbage"), grpc.StatusCode.INVALID_ARGUMENT, "malformed request"
            )
        stream = channel.unary_stream("/TaskHubSidecarService/GetWorkItems")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for _ in stream(b"\x0a\xff\xff\xff\xff"):
                pass
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
    await still_serving(stub)
    assert (await stub.QueryInstances(pb.QueryInstancesRequest())).orchestrationState == []


async def test_malformed_messages_are_invalid_argument(server: ServerThread, stub: Any) -> None:
    await refused(
        stub.StartInstance(pb.CreateInstanceRequest(instanceId="x")), grpc.StatusCode.INVALID_ARGUMENT, "name"
    )
    await refused(
        stub.StartInstance(pb.CreateInstanceRequest(name="o", instanceId="bad\x00id")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "control characters",
    )
    await refused(
        stub.StartInstance(pb.CreateInstanceRequest(name="o", instanceId="x" * 300)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "256",
    )
    await stub.StartInstance(pb.CreateInstanceRequest(name="o", instanceId="ok"))
    await refused(
        stub.RaiseEvent(pb.RaiseEventRequest(instanceId="ok")), grpc.StatusCode.INVALID_ARGUMENT, "event name"
    )
    bad_page = pb.QueryInstancesRequest(query=pb.InstanceQuery(continuationToken={"value": "not-a-token"}))
    await refused(stub.QueryInstances(bad_page), grpc.StatusCode.INVALID_ARGUMENT, "continuation token")
    await refused(stub.PurgeInstances(pb.PurgeInstancesRequest()), grpc.StatusCode.INVALID_ARGUMENT)
    await refused(
        stub.StartInstance(pb.CreateInstanceRequest(name="o", instanceId="ok")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    await refused(
        stub.TerminateInstance(pb.TerminateRequest(instanceId="ghost")), grpc.StatusCode.NOT_FOUND, "ghost"
    )
    await refused(
        stub.RewindInstance(pb.RewindInstanceRequest(instanceId="ok")), grpc.StatusCode.FAILED_PRECONDITION
    )
    # None of it touched what is stored.
    listed = (await stub.QueryInstances(pb.QueryInstancesRequest())).orchestrationState
    assert [s.instanceId for s in listed] == ["ok"]


async def test_oversized_messages_are_resource_exhausted_with_the_limit(
    server: ServerThread, stub: Any
) -> None:
    big = pb.CreateInstanceRequest(name="o", instanceId="big")
    big.input.value = '"' + "x" * (100 * 1024) + '"'
    details = await refused(stub.StartInstance(big), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "65536" in details  # the limit, named
    await still_serving(stub)
    assert not (await stub.GetInstance(pb.GetInstanceRequest(instanceId="big"))).exists


async def test_payloads_over_the_storage_limit_are_resource_exhausted(tmp_path: Path) -> None:
    server = ServerThread(storage=f"sqlite:///{tmp_path / 'small.db'}?max_payload_bytes=1000")
    channel = grpc.aio.insecure_channel(server.address)
    try:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        request = pb.CreateInstanceRequest(name="o", instanceId="p")
        request.input.value = '"' + "y" * 2000 + '"'
        await refused(stub.StartInstance(request), grpc.StatusCode.RESOURCE_EXHAUSTED, "1000 bytes")
        assert not (await stub.GetInstance(pb.GetInstanceRequest(instanceId="p"))).exists
    finally:
        await channel.close()
        server.stop()


async def test_hub_management_is_unimplemented(server: ServerThread, stub: Any) -> None:
    # (Durable entities are served: tests/compat/test_entities.py.)
    calls = [
        stub.CreateTaskHub(pb.CreateTaskHubRequest()),
        stub.DeleteTaskHub(pb.DeleteTaskHubRequest()),
    ]
    for call in calls:
        await refused(call, grpc.StatusCode.UNIMPLEMENTED, "does not support")
    await still_serving(stub)


# --- process lifecycle ------------------------------------------------------------------------


def test_storage_for_hub() -> None:
    assert storage_for_hub("sqlite:////abs/x.db", "a") == "sqlite:////abs/x.db?taskhub=a"
    assert (
        storage_for_hub("sqlite:///x.db?taskhub=z&durable=false", "b")
        == "sqlite:///x.db?durable=false&taskhub=b"
    )
    assert storage_for_hub("memory://", "c") == "memory://?taskhub=c"
    with pytest.raises(ConnectionStringError, match="keeps state itself"):
        storage_for_hub("Endpoint=http://h:1;TaskHub=x;Authentication=None", "d")


async def test_a_busy_port_is_an_error(server: ServerThread, tmp_path: Path) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        await start_server(storage=f"sqlite:///{tmp_path / 'second.db'}", port=server.port)


async def test_sigterm_stops_cleanly_and_hands_work_back(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'sigterm.db'}"
    first = ServerProcess(storage, shutdown_grace_seconds=1.0)
    try:
        channel = grpc.aio.insecure_channel(first.address)
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        for instance_id in ("held", "finished"):
            await stub.StartInstance(pb.CreateInstanceRequest(name="o", instanceId=instance_id))
        async with RawWorker(first.address) as worker:
            await worker.connect()
            items = {}
            for _ in range(2):
                item = await worker.next()
                items[item.orchestratorRequest.instanceId] = item
            started = time.monotonic()
            first.process.send_signal(signal.SIGTERM)
            # A result that comes in while the server drains is still taken.
            done = items["finished"]
            finish = pb.OrchestratorResponse(instanceId="finished", completionToken=done.completionToken)
            finish.actions.add(
                id=0
            ).completeOrchestration.orchestrationStatus = pb.ORCHESTRATION_STATUS_COMPLETED
            await stub.CompleteOrchestratorTask(finish)
            with pytest.raises((EOFError, grpc.aio.AioRpcError)):
                await worker.next(timeout=5)  # the stream ended with the server
            code, output = first.terminate()
            assert code == 0, output
            assert time.monotonic() - started < 15
        await channel.close()
    finally:
        if first.process.poll() is None:
            first.kill()

    second = ServerProcess(storage)
    try:
        async with RawWorker(second.address) as worker:
            await worker.connect()
            began = time.monotonic()
            again = await worker.next(timeout=10)
            # Handed back at shutdown: here at once, not after the 30 s lease ran out.
            assert time.monotonic() - began < 5
            assert again.orchestratorRequest.instanceId == "held"
            assert again.completionToken != items["held"].completionToken
            channel = grpc.aio.insecure_channel(second.address)
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            finished = await stub.GetInstance(pb.GetInstanceRequest(instanceId="finished"))
            assert finished.orchestrationState.orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED
            await channel.close()
    finally:
        second.terminate()


def test_serve_runs_the_dashboard_too(tmp_path: Path) -> None:
    dashboard_port = free_port()
    served = ServerProcess(f"sqlite:///{tmp_path / 'dash.db'}", dashboard_port=dashboard_port)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/", timeout=5) as page:
                    assert page.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        code, output = served.terminate()
    assert code == 0, output


def test_a_busy_dashboard_port_stops_serve(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        storage = f"sqlite:///{tmp_path / 'busy.db'}"
        code = (
            "from duratask.server.app import serve;"
            f"serve(storage={storage!r}, port={free_port()}, dashboard_port={busy})"
        )
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
    assert run.returncode != 0
    assert "address already in use" in (run.stderr + run.stdout).lower()


def test_serve_defaults_follow_the_spec() -> None:
    params = inspect.signature(serve).parameters
    assert params["storage"].default == "sqlite:///duratask.db"
    assert params["host"].default == "127.0.0.1"
    assert params["port"].default == 8080
    assert tuple(params["taskhubs"].default) == ("default",)
    assert params["auth_token"].default is None
    assert params["dashboard_port"].default is None


async def test_a_burst_of_thousands_of_calls_is_served_not_cancelled(tmp_path: Path) -> None:
    """gRPC cancels calls beyond about 1,000 waiting for the server unless told otherwise: a client
    starting 2,500 instances at once over one channel got CANCELLED for some of them."""
    node = ServerThread(storage=f"sqlite:///{tmp_path / 'burst.db'}")
    channel = grpc.aio.insecure_channel(node.address)
    stub = pb_grpc.TaskHubSidecarServiceStub(channel)
    try:
        answers = await asyncio.gather(
            *(
                stub.StartInstance(pb.CreateInstanceRequest(name="o", instanceId=f"b{i}"))
                for i in range(2500)
            ),
            return_exceptions=True,
        )
        failed = [a for a in answers if isinstance(a, BaseException)]
        assert not failed, f"{len(failed)} calls failed, e.g. {failed[0]!r}"
    finally:
        await channel.close()
        node.stop()
