"""What keeps `duratask serve` cheap per work item, and that it never costs correctness: the
histories kept between episodes (``server.history_cache``) always equal the stored ones, even
when another node ran an episode in between, after continue-as-new and after a hand-back; and the
dispatcher leases once per episode, not again after every item it routes or completes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from duratask import history as h
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.protocol import convert, pb, pb_grpc
from duratask.server.history_cache import History, HistoryCache
from duratask.server.work_items import Dispatcher
from tests.compat.serverlib import RawWorker, ServerThread
from tests.integration.test_server_work_items import activity_done, respond, start, state_of

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def serve(db: Path) -> ServerThread:
    return ServerThread(storage=f"sqlite:///{db}", health_ping_seconds=0.3)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    running = serve(tmp_path / "serve.db")
    yield running
    running.stop()


@pytest.fixture
async def stub(server: ServerThread) -> AsyncIterator[Any]:
    channel = grpc.aio.insecure_channel(server.address)
    yield pb_grpc.TaskHubSidecarServiceStub(channel)
    await channel.close()


def dispatcher_of(server: ServerThread) -> Dispatcher:
    assert server.server is not None
    return server.server.hubs["default"].dispatcher


def stored_history(server: ServerThread, instance_id: str) -> list[bytes]:
    """The stored history, read by the server's own backend, as protocol bytes."""
    backend = dispatcher_of(server).backend
    events = server.call(backend.get_history(instance_id))
    return [convert.event_to_pb(e).SerializeToString() for e in events]


def past_events(item: Any) -> list[bytes]:
    return [e.SerializeToString() for e in item.orchestratorRequest.pastEvents]


async def run_activity(worker: RawWorker, stub: Any, result: str) -> None:
    activity = await worker.next()
    assert activity.WhichOneof("request") == "activityRequest"
    await stub.CompleteActivityTask(activity_done(activity, result))


# --- the history cache, alone ----------------------------------------------------------------


def started(execution_id: str = "e1") -> h.ExecutionStarted:
    return h.ExecutionStarted(timestamp=NOW, name="orch", instance_id="i", execution_id=execution_id)


def test_a_kept_history_serves_only_its_execution_at_its_length() -> None:
    cache = HistoryCache(max_events=100)
    events: list[h.HistoryEvent] = [h.OrchestratorStarted(timestamp=NOW), started()]
    cache.keep("i", History("e1", events))
    assert cache.take("i", "e1", 3) is None  # another node appended an event meanwhile
    assert cache.take("i", "e1", 2) is None  # a take removes the entry, hit or miss
    cache.keep("i", History("e1", events))
    assert cache.take("i", "e2", 2) is None  # continue-as-new, rewind, purge and restart
    cache.keep("i", History("e1", events))
    kept = cache.take("i", "e1", 2)
    assert kept is not None and kept.events == events
    assert (cache.hits, cache.misses, len(cache), cache.events) == (1, 3, 0, 0)


def test_the_cache_holds_at_most_its_events_least_recently_kept_leave_first() -> None:
    cache = HistoryCache(max_events=5)
    for name in "abc":
        cache.keep(name, History("e", [h.OrchestratorStarted(timestamp=NOW)] * 2))
    assert cache.events == 4 and cache.take("a", "e", 2) is None  # evicted
    cache.keep("huge", History("e", [h.OrchestratorStarted(timestamp=NOW)] * 6))
    assert cache.take("huge", "e", 6) is None  # larger than the whole cache: never kept
    cache.forget("b")
    assert cache.events == 2 and cache.take("c", "e", 2) is not None


def test_protocol_messages_are_converted_once_and_carried_over_commits() -> None:
    before = History("e1", [h.OrchestratorStarted(timestamp=NOW), started()])
    first = before.protocol_messages()
    assert len(first) == 2
    appended = [h.TaskScheduled(timestamp=NOW, event_id=0, name="act")]
    after = before.after_commit("e1", appended, reset=False)
    assert after.events == [*before.events, *appended]
    messages = after.protocol_messages()
    assert messages[:2] == first and messages[0] is first[0]  # the same message objects, reused
    assert messages[2].WhichOneof("eventType") == "taskScheduled"
    reset = after.after_commit("e2", [started("e2")], reset=True)
    assert reset.execution_id == "e2" and reset.events == [started("e2")]


# --- the cache in a running server -----------------------------------------------------------


async def test_every_item_carries_the_stored_history_and_kept_histories_are_used(
    server: ServerThread, stub: Any
) -> None:
    instance_id = await start(stub)
    async with RawWorker(server.address) as worker:
        await worker.connect()
        item = await worker.next()
        for n in range(5):
            assert past_events(item) == stored_history(server, instance_id)
            await stub.CompleteOrchestratorTask(respond(item, h.ScheduleTask(id=n, name="act")))
            await run_activity(worker, stub, str(n))
            item = await worker.next()
        assert past_events(item) == stored_history(server, instance_id)
        await stub.CompleteOrchestratorTask(
            respond(item, h.CompleteOrchestration(id=9, status=Status.COMPLETED))
        )
    cache = dispatcher_of(server).histories
    assert cache.hits == 5 and cache.misses == 0  # no read after the first episode
    assert len(cache) == 0  # a finished instance leaves


async def test_an_episode_run_by_another_node_is_read_not_guessed(tmp_path: Path) -> None:
    """Two servers on one database: what one node kept goes stale when the other runs an episode;
    the length in the lease tells, and the node reads the stored history instead."""
    nodes = [serve(tmp_path / "shared.db"), serve(tmp_path / "shared.db")]
    channels = [grpc.aio.insecure_channel(node.address) for node in nodes]
    stubs = [pb_grpc.TaskHubSidecarServiceStub(channel) for channel in channels]
    try:
        instance_id = await start(stubs[0], instance_id="shared-1")
        task_ids = iter(range(100))
        for _ in range(3):
            for node, node_stub in zip(nodes, stubs, strict=True):
                async with RawWorker(node.address) as worker:  # only this node has a worker
                    await worker.connect()
                    item = await worker.next()
                    assert past_events(item) == stored_history(node, instance_id)
                    task_id = next(task_ids)
                    await node_stub.CompleteOrchestratorTask(
                        respond(item, h.ScheduleTask(id=task_id, name="act"))
                    )
                    await run_activity(worker, node_stub, str(task_id))
        async with RawWorker(nodes[0].address) as worker:
            await worker.connect()
            item = await worker.next()
            assert past_events(item) == stored_history(nodes[0], instance_id)
            done = h.CompleteOrchestration(id=99, status=Status.COMPLETED)
            await stubs[0].CompleteOrchestratorTask(respond(item, done))
        assert (await state_of(stubs[0], instance_id)).runtime_status is Status.COMPLETED
        assert dispatcher_of(nodes[0]).histories.misses >= 3  # the other node's episodes were read
    finally:
        for channel in channels:
            await channel.close()
        for node in nodes:
            node.stop()


async def test_continue_as_new_and_hand_backs_keep_histories_exact(server: ServerThread, stub: Any) -> None:
    instance_id = await start(stub, input="0")
    async with RawWorker(server.address) as worker:
        await worker.connect()
        item = await worker.next()
        await stub.CompleteOrchestratorTask(respond(item, h.ScheduleTask(id=0, name="act")))
        await run_activity(worker, stub, "1")
        item = await worker.next()
        assert past_events(item) == stored_history(server, instance_id)
        restart = h.CompleteOrchestration(id=1, status=Status.CONTINUED_AS_NEW, result='"again"')
        await stub.CompleteOrchestratorTask(respond(item, restart))

        item = await worker.next()  # the new execution: no history yet
        assert past_events(item) == [] == stored_history(server, instance_id)
        await stub.CompleteOrchestratorTask(respond(item, h.ScheduleTask(id=0, name="act")))
        await run_activity(worker, stub, "2")
        item = await worker.next()
        assert past_events(item) == stored_history(server, instance_id)
        await stub.AbandonTaskOrchestratorWorkItem(
            pb.AbandonOrchestrationTaskRequest(completionToken=item.completionToken)
        )
        again = await worker.next(timeout=5)  # handed back: the same history, kept meanwhile
        assert past_events(again) == past_events(item) == stored_history(server, instance_id)
        await stub.CompleteOrchestratorTask(
            respond(again, h.CompleteOrchestration(id=1, status=Status.COMPLETED, result='"end"'))
        )
    state = await state_of(stub, instance_id)
    assert state.runtime_status is Status.COMPLETED and state.serialized_output == '"end"'


# --- leases --------------------------------------------------------------------------------------


def count_calls(server: ServerThread, name: str) -> Callable[[], int]:
    """Count the dispatcher's calls of one backend method (the real method still runs)."""
    backend = dispatcher_of(server).backend
    real = getattr(backend, name)
    calls = 0

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real(*args, **kwargs)

    setattr(backend, name, counted)
    return lambda: calls


async def test_one_lease_per_episode() -> None:
    # In process memory: no other process can add work, so pumps only wake when told (or after
    # 5 s idle); a database file is also polled every second, which would blur the count.
    node = ServerThread(storage="memory://", health_ping_seconds=0.3)
    channel = grpc.aio.insecure_channel(node.address)
    node_stub = pb_grpc.TaskHubSidecarServiceStub(channel)
    try:
        async with RawWorker(node.address) as worker:
            await worker.connect()
            await asyncio.sleep(0.2)  # the pumps' first, empty leases
            orchestration_leases = count_calls(node, "lease_orchestrations")
            activity_leases = count_calls(node, "lease_activities")
            began = time.monotonic()
            await start(node_stub, instance_id="counted")
            item = await worker.next()
            for n in range(3):
                await node_stub.CompleteOrchestratorTask(respond(item, h.ScheduleTask(id=n, name="act")))
                await run_activity(worker, node_stub, str(n))
                item = await worker.next()
            done = h.CompleteOrchestration(id=9, status=Status.COMPLETED)
            await node_stub.CompleteOrchestratorTask(respond(item, done))
            await asyncio.sleep(0.2)
            idle_timeouts = int((time.monotonic() - began) // 5)  # a pump idle 5 s looks anyway
    finally:
        await channel.close()
        node.stop()
    # Four episodes and three activities, each leased once: no lease right after routing an item
    # (the storage had nothing more) and none when a completion frees a slot (nothing new yet).
    assert 4 <= orchestration_leases() <= 4 + idle_timeouts
    assert 3 <= activity_leases() <= 3 + idle_timeouts


async def test_the_entity_pump_sleeps_through_orchestrations_and_wakes_for_entities(tmp_path: Path) -> None:
    """In process memory (no polling to hide a missed wake-up): orchestration traffic costs the
    entity pump no lease, and a signal still reaches its entity at once."""
    from durabletask.entities import EntityInstanceId

    from tests.compat.conftest import make_client, make_worker
    from tests.compat.test_entities import Counter, state_of

    node = ServerThread(storage="memory://", health_ping_seconds=0.3)
    worker = make_worker("durabletask", node.address)
    worker.add_entity(Counter)
    worker.use_work_item_filters()  # entities only: the orchestration below is the raw worker's
    worker.start()
    client = make_client("durabletask", node.address)
    channel = grpc.aio.insecure_channel(node.address)
    try:
        await asyncio.sleep(0.5)  # the worker connected; the pumps made their first, empty leases
        entity_leases = count_calls(node, "lease_entities")
        node_stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        async with RawWorker(node.address) as raw:
            await raw.connect()
            await start(node_stub, instance_id="plain")
            item = await raw.next()
            await node_stub.CompleteOrchestratorTask(respond(item, h.ScheduleTask(id=0, name="act")))
            await run_activity(raw, node_stub, "1")
            item = await raw.next()
            done = h.CompleteOrchestration(id=1, status=Status.COMPLETED)
            await node_stub.CompleteOrchestratorTask(respond(item, done))
        assert entity_leases() == 0

        counter = EntityInstanceId("Counter", "prompt")
        for amount, total in ((1, 1), (2, 3), (3, 6)):
            began = asyncio.get_running_loop().time()
            await asyncio.to_thread(client.signal_entity, counter, "add", amount)
            while await asyncio.to_thread(state_of, client, counter) != total:
                assert asyncio.get_running_loop().time() - began < 2.0, (
                    "the entity pump slept through a signal"
                )
                await asyncio.sleep(0.02)
        assert entity_leases() >= 3
    finally:
        await channel.close()
        client.close()
        worker.stop()
        node.stop()


def test_entity_filters_have_names_only() -> None:
    """A worker that registers entities and sends work-item filters (the official SDKs'
    ``use_work_item_filters``) lists ``EntityFilter``s, which carry no versions."""
    from duratask.server.work_items import NameFilter

    accepted = NameFilter.of([pb.EntityFilter(name="counter")])
    assert accepted.accepts("counter", None) and not accepted.accepts("other", None)


async def test_a_completion_leases_the_next_step_in_its_own_transaction(tmp_path: Path) -> None:
    """An episode's commit leases the activity it schedules, and an activity's result leases the
    episode it makes ready: after the first lease, no step costs a lease transaction of its own."""
    node = serve(tmp_path / "serve.db")
    channel = grpc.aio.insecure_channel(node.address)
    node_stub = pb_grpc.TaskHubSidecarServiceStub(channel)
    storage = dispatcher_of(node).backend.storage
    try:
        async with RawWorker(node.address) as worker:
            await worker.connect()
            await asyncio.sleep(0.2)  # the pumps' first, empty leases
            counts = {
                name: count_storage_calls(storage, name)
                for name in (
                    "lease_orchestrations",
                    "lease_activities",
                    "commit_orchestrations_then_lease_activities",
                    "complete_activities_then_lease_orchestrations",
                )
            }
            began = time.monotonic()
            await start(node_stub, instance_id="prefetched")
            item = await worker.next()
            for n in range(3):
                await node_stub.CompleteOrchestratorTask(respond(item, h.ScheduleTask(id=n, name="act")))
                await run_activity(worker, node_stub, str(n))
                item = await worker.next()
            done = h.CompleteOrchestration(id=9, status=Status.COMPLETED)
            await node_stub.CompleteOrchestratorTask(respond(item, done))
            await asyncio.sleep(0.2)
            polls = int(time.monotonic() - began) + 1  # a database file is also polled every second
    finally:
        await channel.close()
        node.stop()
    assert counts["commit_orchestrations_then_lease_activities"]() == 4
    assert counts["complete_activities_then_lease_orchestrations"]() == 3
    assert 1 <= counts["lease_orchestrations"]() <= 1 + polls  # the first episode, after the start
    assert counts["lease_activities"]() <= polls


def count_storage_calls(storage: Any, name: str) -> Callable[[], int]:
    """Count calls of one storage method (the real method still runs)."""
    real = getattr(storage, name)
    calls = 0

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real(*args, **kwargs)

    setattr(storage, name, counted)
    return lambda: calls
