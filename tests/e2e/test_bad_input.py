"""Bad input gets a clear error and harms nothing that is stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from duratask import (
    ActivityContext,
    ConnectionStringError,
    DurableTaskClient,
    InvalidInstanceIdError,
    OrchestrationContext,
    PayloadTooLargeError,
    SerializationError,
    Worker,
)
from duratask import (
    OrchestrationRuntimeStatus as S,
)
from duratask.connection import parse

from . import orchestrations as o

T = 20


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("mysql://x", "unknown connection string scheme"),
        ("sqlite://", "needs a path"),
        ("sqlite:///x.db?bogus=1", "unknown option"),
        ("Endpoint=http://localhost:8080;TaskHub=default", "missing Authentication"),
        ("Endpoint=http://localhost:8080;Authentication=None", "missing Taskhub"),
        ("Endpoint=localhost:8080;TaskHub=d;Authentication=None", "Endpoint must be"),
        ("Endpoint=http://h:1;TaskHub=d;Authentication=None;Colour=blue", "unknown key"),
        ("Endpoint=http://h:1;TaskHub=d;Authentication=Token", "needs Token"),
        ("Endpoint=http://h:1;TaskHub=d;Authentication=ManagedIdentity", "unsupported Authentication"),
        ("just some words", "cannot read connection string"),
    ],
)
def test_malformed_connection_strings(text: str, fragment: str) -> None:
    with pytest.raises(ConnectionStringError) as info:
        parse(text)
    assert fragment.lower() in str(info.value).lower()


def test_endpoint_keys_are_case_insensitive() -> None:
    target = parse("endpoint=http://localhost:8080;TASKHUB=orders;authentication=none")
    assert target.address == "localhost:8080" and target.taskhub == "orders"  # type: ignore[union-attr]


async def test_client_with_malformed_string_raises_clearly() -> None:
    with pytest.raises(ConnectionStringError):
        async with DurableTaskClient("nonsense://"):
            pass


def big_result(ctx: ActivityContext, n: int) -> str:
    return "x" * n


async def returns_big(ctx: OrchestrationContext, n: int) -> str:
    result: str = await ctx.call_activity(big_result, n)
    return result


async def returns_unserializable(ctx: OrchestrationContext, _: Any) -> object:
    return object()


@pytest.fixture
async def small_limit(tmp_path: Path):  # type: ignore[no-untyped-def]
    conn = f"sqlite:///{tmp_path / 'limits.db'}?max_payload_bytes=1000"
    worker = o.register_all(Worker(conn, shutdown_timeout=2))
    worker.add_activity(big_result)
    worker.add_orchestrator(returns_big)
    worker.add_orchestrator(returns_unserializable)
    async with worker, DurableTaskClient(conn) as client:
        yield client


async def test_oversized_input_rejected_nothing_stored(small_limit: DurableTaskClient) -> None:
    client = small_limit
    with pytest.raises(PayloadTooLargeError) as info:
        await client.schedule_new_orchestration_instance(o.hello_cities, "y" * 2000, instance_id="big")
    assert "1000" in str(info.value)
    assert await client.get_instance("big") is None


async def test_oversized_event_rejected_instance_unharmed(small_limit: DurableTaskClient) -> None:
    client = small_limit
    iid = await client.schedule_new_orchestration_instance(o.wait_for_approval)
    await client.wait_for_instance_start(iid, timeout=T)
    with pytest.raises(PayloadTooLargeError):
        await client.raise_event(iid, "approval", "z" * 5000)
    await client.raise_event(iid, "approval", "ok")
    done = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert done is not None and done.read_output_as(str) == "ok"


async def test_oversized_activity_result_fails_instance_clearly(small_limit: DurableTaskClient) -> None:
    client = small_limit
    iid = await client.schedule_new_orchestration_instance(returns_big, 5000)
    meta = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert meta is not None and meta.runtime_status is S.FAILED
    assert meta.failure_details is not None and "over the limit" in meta.failure_details.error_message
    ok = await client.schedule_new_orchestration_instance(returns_big, 10)
    good = await client.wait_for_instance_completion(ok, True, timeout=T)
    assert good is not None and good.read_output_as(str) == "x" * 10


async def test_unserializable_input_and_output(small_limit: DurableTaskClient) -> None:
    client = small_limit
    with pytest.raises(SerializationError):
        await client.schedule_new_orchestration_instance(o.hello_cities, object(), instance_id="obj")
    assert await client.get_instance("obj") is None
    iid = await client.schedule_new_orchestration_instance(returns_unserializable)
    meta = await client.wait_for_instance_completion(iid, True, timeout=T)
    assert meta is not None and meta.runtime_status is S.FAILED
    assert meta.failure_details is not None and "serializ" in meta.failure_details.error_message.lower()


@pytest.mark.parametrize("bad_id", ["", "   ", "x" * 257, "tab\there"])
async def test_bad_instance_ids(small_limit: DurableTaskClient, bad_id: str) -> None:
    with pytest.raises(InvalidInstanceIdError):
        await small_limit.schedule_new_orchestration_instance(o.hello_cities, instance_id=bad_id)


async def test_oversized_custom_status_fails_instance_and_is_not_stored(small_limit: DurableTaskClient) -> None:
    iid = await small_limit.schedule_new_orchestration_instance(o.big_custom_status, 5000)
    meta = await small_limit.wait_for_instance_completion(iid, True, timeout=T)
    assert meta is not None and meta.runtime_status is S.FAILED
    assert meta.failure_details is not None and "custom status" in meta.failure_details.error_message
    assert meta.serialized_custom_status is None
