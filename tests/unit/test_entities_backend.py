"""LocalBackend's durable entities over real storages (a SQLite file, PostgreSQL): signals and
batches, critical sections driven by orchestration commits, lost and abandoned leases, queries,
cleaning. No gRPC: the backend calls the server would make."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from duratask import history as h
from duratask.backend import entities as e
from duratask.backend.api import OrchestrationResult, OrchestrationWorkItem
from duratask.backend.local import BackendOptions, LocalBackend, utcnow
from duratask.errors import InvalidInstanceIdError
from duratask.models import OrchestrationQuery
from duratask.storage.base import InboxMessage, Storage

OK = e.OperationSucceeded


async def _sqlite(tmp_path: Path) -> Storage:
    from duratask.storage.sqlite import SqliteStorage

    storage = SqliteStorage(str(tmp_path / "entities.db"))
    await storage.open()
    return storage


async def _postgres(tmp_path: Path) -> Storage:
    from duratask.storage.postgres import PostgresStorage
    from tests.pgserver import SESSION_ID, session_database_url

    storage = PostgresStorage(session_database_url(), f"entities/{SESSION_ID}/{tmp_path.name}")
    await storage.open()
    return storage


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocalBackend]:
    storage = await (_sqlite if request.param == "sqlite" else _postgres)(tmp_path)
    backend = LocalBackend(storage, BackendOptions(lease_seconds=30, max_payload_bytes=1000))
    yield backend
    await backend.close()


async def batches(backend: LocalBackend, limit: int = 10) -> list[e.EntityWorkItem]:
    """Lease until the entities' lock traffic has settled; the batches for a worker."""
    found: list[e.EntityWorkItem] = []
    for _ in range(10):
        items = await backend.lease_entities(limit)
        found += items
        if not items and not await _visible_entity_messages(backend):
            return found
    return found


async def _visible_entity_messages(backend: LocalBackend) -> bool:
    leases = await backend.storage.lease_orchestrations(100, 30, id_prefix="@")
    for lease in leases:
        await backend.storage.abandon_orchestration(lease.instance.instance_id, lease.token)
    return bool(leases)


async def run_batch(backend: LocalBackend, item: e.EntityWorkItem, state: Any, results: list[Any]) -> bool:
    outcome = e.EntityBatchOutcome(results=results, state=None if state is None else str(state))
    (applied,) = await backend.complete_entities([(item, outcome)])
    return applied


async def episode(backend: LocalBackend, instance_id: str) -> OrchestrationWorkItem:
    items = [i for i in await backend.lease_orchestrations(10) if i.instance_id == instance_id]
    assert len(items) == 1, items
    return items[0]


async def send(backend: LocalBackend, item: OrchestrationWorkItem, *messages: h.EntityMessage) -> None:
    actions: list[h.OrchestratorAction] = [
        h.SendEntityMessage(id=n, message=m) for n, m in enumerate(messages)
    ]
    assert await backend.complete_orchestrations([(item, OrchestrationResult(actions=actions))]) == [True]


async def test_signals_run_as_one_batch_and_the_state_is_kept(backend: LocalBackend) -> None:
    assert await backend.get_entity("@counter@a", True) is None
    for amount in ("1", "2", "3"):
        await backend.signal_entity("@counter@a", "add", amount)

    (item,) = await batches(backend)
    assert (item.instance_id, item.name, item.state) == ("@counter@a", "counter", None)
    assert [(op.operation, op.input) for op in item.operations] == [("add", "1"), ("add", "2"), ("add", "3")]
    assert await backend.lease_entities(10) == []  # one batch per entity at a time
    await backend.signal_entity("@counter@a", "add", "4")
    assert await backend.lease_entities(10) == []  # still: the entity is leased
    assert await run_batch(backend, item, 6, [OK(result="1"), OK(result="3"), OK(result="6")])

    (again,) = await batches(backend)
    assert again.state == "6" and [op.input for op in again.operations] == ["4"]
    assert await run_batch(backend, again, 10, [OK()])
    metadata = await backend.get_entity("@counter@a", True)
    assert metadata is not None and metadata.serialized_state == "10" and metadata.locked_by is None
    assert (await backend.get_entity("@counter@a", False)).serialized_state is None  # type: ignore[union-attr]


async def test_a_lost_lease_changes_nothing_and_the_batch_comes_again(backend: LocalBackend) -> None:
    await backend.signal_entity("@counter@b", "add", "1")
    (first,) = await batches(backend)
    backend.options = BackendOptions(lease_seconds=0.2, max_payload_bytes=1000)
    await backend.abandon_entity(first)
    (short,) = await batches(backend)
    await asyncio.sleep(0.3)
    (second,) = await batches(backend)
    assert second.token != short.token and second.operations == short.operations

    assert not await run_batch(backend, short, 1, [OK()])  # fenced out: its lease expired
    assert await run_batch(backend, second, 1, [OK()])
    assert not await run_batch(backend, second, 2, [OK()])  # once only
    assert (await backend.get_entity("@counter@b", True)).serialized_state == "1"  # type: ignore[union-attr]
    assert await batches(backend) == []


async def test_a_critical_section_from_lock_to_unlock(backend: LocalBackend) -> None:
    await backend.start_orchestration("o", "orch", None)
    item = await episode(backend, "orch")
    cs = "section-1"
    await send(
        backend,
        item,
        h.EntityLockRequested(timestamp=utcnow(), critical_section_id=cs, lock_set=["@c@1", "@c@2"]),
    )
    assert await batches(backend) == []  # the locks are the backend's business, no worker's

    granted = await episode(backend, "orch")
    assert [type(ev).__name__ for ev in granted.new_events] == ["OrchestratorStarted", "EntityLockGranted"]
    for entity_id in ("@c@1", "@c@2"):
        status = e.read_status(await backend.storage.get_instance(entity_id))  # type: ignore[arg-type]
        assert (status.locked_by, status.critical_section_id) == ("orch", cs)

    await backend.signal_entity("@c@1", "add", "5")  # from outside: waits for the lock
    call = h.EntityOperationCalled(
        timestamp=utcnow(), request_id="r1", operation="get", target_instance_id="@c@1"
    )
    await send(backend, granted, call)
    (batch,) = await batches(backend)
    assert [op.operation for op in batch.operations] == ["get"]
    assert await run_batch(backend, batch, None, [OK(result="0")])
    waiting = await backend.query_entities(
        e.EntityQuery(instance_id_starts_with="@c@1", include_transient=True)
    )
    assert [(m.locked_by, m.backlog_queue_size) for m in waiting.entities] == [("orch", 1)]

    answered = await episode(backend, "orch")
    (reply,) = [ev for ev in answered.new_events if isinstance(ev, h.EntityOperationCompleted)]
    assert (reply.request_id, reply.output) == ("r1", "0")
    unlocks = [
        h.EntityUnlockSent(timestamp=utcnow(), critical_section_id=cs, target_instance_id=t)
        for t in ("@c@1", "@c@2")
    ]
    await send(backend, answered, *unlocks)
    (after,) = await batches(backend)
    assert [(op.operation, op.input) for op in after.operations] == [("add", "5")]
    assert await run_batch(backend, after, 5, [OK()])
    history = await backend.get_history("orch")
    kinds = [type(ev).__name__ for ev in history]
    assert kinds.count("EntityLockRequested") == 1 and kinds.count("EntityUnlockSent") == 2
    for entity_id in ("@c@1", "@c@2"):
        assert e.read_status(await backend.storage.get_instance(entity_id)) == e.EntityStatus()  # type: ignore[arg-type]


async def test_failures_and_oversized_results_reach_the_caller(backend: LocalBackend) -> None:
    await backend.start_orchestration("o", "caller", None)
    item = await episode(backend, "caller")
    calls = [
        h.EntityOperationCalled(
            timestamp=utcnow(), request_id=f"r{n}", operation="op", target_instance_id="@c@f"
        )
        for n in range(2)
    ]
    await send(backend, item, *calls)
    (batch,) = await batches(backend)
    huge = '"' + "x" * 2000 + '"'
    assert await run_batch(backend, batch, huge, [OK(result="1"), OK(result="2")])
    answered = await episode(backend, "caller")
    failed = [ev for ev in answered.new_events if isinstance(ev, h.EntityOperationFailed)]
    assert [f.request_id for f in failed] == ["r0", "r1"]
    assert "PayloadTooLargeError" in failed[0].failure.error_type
    assert await backend.get_entity("@c@f", True) is None  # the state was not stored


async def test_query_entities_pages_and_filters(backend: LocalBackend) -> None:
    for n in range(5):
        await backend.signal_entity(f"@counter@q{n}", "set", str(n))
    await backend.signal_entity("@other@q", "set", "1")
    for item in await batches(backend):
        assert await run_batch(backend, item, item.operations[0].input, [OK()])
    await backend.signal_entity("@counter@empty", "noop", None)
    for item in await batches(backend):
        assert await run_batch(backend, item, None, [OK()])  # ran, left no state: transient

    pages, token = [], None
    while True:
        page = await backend.query_entities(
            e.EntityQuery(instance_id_starts_with="counter", page_size=2, continuation_token=token)
        )
        pages.append([m.instance_id for m in page.entities])
        token = page.continuation_token
        if token is None:
            break
    assert [i for p in pages for i in p] == [f"@counter@q{n}" for n in range(5)]
    assert all(len(p) <= 2 for p in pages)
    everything = await backend.query_entities(e.EntityQuery(include_transient=True, page_size=100))
    assert {m.instance_id for m in everything.entities} == {
        *(f"@counter@q{n}" for n in range(5)),
        "@other@q",
        "@counter@empty",
    }
    assert (
        await backend.query_instances(OrchestrationQuery())
    ).instances == []  # entities are no orchestrations


async def test_clean_removes_empty_entities_and_releases_orphaned_locks(backend: LocalBackend) -> None:
    await backend.signal_entity("@c@empty", "noop", None)
    await backend.signal_entity("@c@full", "set", "1")
    lock = h.EntityLockRequested(
        timestamp=utcnow(), critical_section_id="cs", lock_set=["@c@orphan"], parent_instance_id="ghost"
    )
    await backend.storage.create_instance(e.new_entity("@c@orphan", utcnow()))
    await backend.storage.enqueue([InboxMessage(instance_id="@c@orphan", event=lock, visible_at=utcnow())])
    for item in await batches(backend):
        state = None if item.instance_id == "@c@empty" else "1"
        assert await run_batch(backend, item, state, [OK()])
    assert e.read_status(await backend.storage.get_instance("@c@orphan")).locked_by == "ghost"  # type: ignore[arg-type]

    result = await backend.clean_entity_storage(remove_empty_entities=True, release_orphaned_locks=True)

    assert (result.empty_entities_removed, result.orphaned_locks_released) == (1, 1)
    assert result.continuation_token is None
    assert await backend.storage.get_instance("@c@empty") is None
    assert await backend.storage.get_instance("@c@full") is not None
    assert await batches(backend) == []  # the unlock is applied
    assert e.read_status(await backend.storage.get_instance("@c@orphan")) == e.EntityStatus()  # type: ignore[arg-type]
    again = await backend.clean_entity_storage(remove_empty_entities=True, release_orphaned_locks=True)
    assert (again.empty_entities_removed, again.orphaned_locks_released) == (1, 0)  # the unlocked orphan


async def test_cleaning_in_pages(backend: LocalBackend) -> None:
    for n in range(5):
        await backend.signal_entity(f"@c@{n}", "noop", None)
    for item in await batches(backend):
        assert await run_batch(backend, item, None, [OK()])
    removed, token, calls = 0, None, 0
    while True:
        result = await backend.clean_entity_storage(True, True, token, page_size=2)
        removed, token, calls = removed + result.empty_entities_removed, result.continuation_token, calls + 1
        if token is None:
            break
    assert (removed, calls) == (5, 3)


async def test_orchestrations_may_not_use_entity_ids(backend: LocalBackend) -> None:
    with pytest.raises(InvalidInstanceIdError, match="entities"):
        await backend.start_orchestration("o", "@counter@x", None)
    with pytest.raises(ValueError):
        await backend.signal_entity("counter-x", "add", None)
    with pytest.raises(ValueError):
        await backend.signal_entity("@counter@x", "", None)


async def test_a_delayed_signal_waits_and_the_entity_pump_wakes_for_it(backend: LocalBackend) -> None:
    from datetime import timedelta

    await backend.signal_entity("@c@later", "add", "1", scheduled_time=utcnow() + timedelta(seconds=0.5))
    assert await backend.lease_entities(10) == []  # the row's creation marker only
    assert await backend.lease_entities(10) == []
    started = asyncio.get_running_loop().time()
    await backend.wait_for_entity_work(5)
    (item,) = await backend.lease_entities(10)
    assert 0.3 < asyncio.get_running_loop().time() - started < 3
    assert [op.operation for op in item.operations] == ["add"]
    assert item.operations[0].scheduled_time is not None
