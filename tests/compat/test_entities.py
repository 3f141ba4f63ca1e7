"""Durable entities with the official Python SDK (durabletask 1.12 and durabletask-azuremanaged
1.12), unmodified, against `duratask serve`: signals (also delayed), reads, queries, cleaning,
calls and signals from orchestrations, critical sections, and the ugly paths (an entity nobody
registered, a stale completion, a worker that dies in the middle of a batch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from durabletask import task
from durabletask.client import EntityQuery, OrchestrationStatus
from durabletask.entities import DurableEntity, EntityContext, EntityInstanceId

from duratask.protocol import pb
from tests.compat.conftest import make_client, make_worker
from tests.compat.serverlib import RawWorker, ServerThread, stub

TIMEOUT = 30

# --- entities and orchestrators (module level: the SDK names them after the classes/functions) --


class Counter(DurableEntity):
    def add(self, amount: int) -> int:
        value: int = self.get_state(int, 0) + amount
        self.set_state(value)
        return value

    def get(self) -> int:
        value: int = self.get_state(int, 0)
        return value

    def set(self, value: int) -> None:
        self.set_state(value)

    def delete(self) -> None:
        self.set_state(None)

    def fail(self, message: str) -> None:
        self.set_state(-1)  # rolled back: a failing operation changes nothing
        raise ValueError(message)

    def relay(self, target: str) -> None:
        """Signal another counter, and start an orchestration that reads it."""
        other = EntityInstanceId.parse(target)
        self.signal_entity(other, "add", 10)
        self.schedule_new_orchestration("read_counter", input=target, instance_id=f"read-{other.key}")


def account(ctx: EntityContext, amount: Any) -> Any:
    """A function-style entity: a balance that can go up or down."""
    balance: int = ctx.get_state(int, 0)
    if ctx.operation == "deposit":
        ctx.set_state(balance + amount)
    elif ctx.operation == "balance":
        return balance
    else:
        raise ValueError(f"unknown operation {ctx.operation!r}")
    return None


def read_counter(ctx: task.OrchestrationContext, entity_id: str) -> Any:
    return (yield ctx.call_entity(EntityInstanceId.parse(entity_id), "get"))


def use_counter(ctx: task.OrchestrationContext, key: str) -> Any:
    counter = EntityInstanceId("Counter", key)
    first = yield ctx.call_entity(counter, "add", 5)
    ctx.signal_entity(counter, "add", 1)
    second = yield ctx.call_entity(counter, "add", 10)
    try:
        yield ctx.call_entity(counter, "fail", "no way")
    except task.TaskFailedError as failure:
        caught = str(failure)
    after = yield ctx.call_entity(counter, "get")
    return {"first": first, "second": second, "caught": caught, "after": after}


def calls_unknown(ctx: task.OrchestrationContext, key: str) -> Any:
    try:
        yield ctx.call_entity(EntityInstanceId("nobody_registered_this", key), "anything")
    except task.TaskFailedError as failure:
        return f"failed: {failure}"
    return "no failure"


def noop(ctx: task.ActivityContext, _: Any) -> None:
    return None


def increment_locked(ctx: task.OrchestrationContext, args: Any) -> Any:
    """Read, pause (an activity round trip), write: only safe inside a critical section."""
    counter = EntityInstanceId("Counter", args["key"])
    for _ in range(args["times"]):
        lock = yield ctx.lock_entities([counter])
        with lock:
            value = yield ctx.call_entity(counter, "get")
            yield ctx.call_activity(noop)
            yield ctx.call_entity(counter, "set", value + 1)
    return args["times"]


def transfer(ctx: task.OrchestrationContext, args: Any) -> Any:
    """Move money between two accounts, both locked (the SDK sorts the lock set: no deadlock)."""
    source, target = (EntityInstanceId("account", k) for k in (args["source"], args["target"]))
    for _ in range(args["times"]):
        lock = yield ctx.lock_entities([source, target])
        with lock:
            balance = yield ctx.call_entity(source, "balance")
            yield ctx.call_activity(noop)
            yield task.when_all(
                [ctx.call_entity(source, "deposit", -1), ctx.call_entity(target, "deposit", 1)]
            )
            assert balance >= 0
    return args["times"]


def hold_lock(ctx: task.OrchestrationContext, keys: list[str]) -> Any:
    """Lock the counters and keep them until told to let go."""
    lock = yield ctx.lock_entities([EntityInstanceId("Counter", k) for k in keys])
    with lock:
        ctx.set_custom_status("locked")
        yield ctx.wait_for_external_event("release")
    return "released"


def lock_once(ctx: task.OrchestrationContext, keys: list[str]) -> Any:
    lock = yield ctx.lock_entities([EntityInstanceId("Counter", k) for k in keys])
    with lock:
        return (yield ctx.call_entity(EntityInstanceId("Counter", keys[0]), "add", 1))


ENTITIES: list[Any] = [Counter, account]
ORCHESTRATORS = [read_counter, use_counter, calls_unknown, increment_locked, transfer, hold_lock, lock_once]
ACTIVITIES = [noop]


def start_worker(flavour: str, address: str) -> Any:
    w = make_worker(flavour, address)
    for entity in ENTITIES:
        w.add_entity(entity)
    for fn in ORCHESTRATORS:
        w.add_orchestrator(fn)
    for fn in ACTIVITIES:
        w.add_activity(fn)
    w.start()
    return w


@pytest.fixture(scope="module", autouse=True)
def worker(server: ServerThread, flavour: str) -> Iterator[Any]:
    w = start_worker(flavour, server.address)
    yield w
    w.stop()


def key() -> str:
    return uuid.uuid4().hex[:12]


def eventually(check: Callable[[], Any], timeout: float = TIMEOUT, every: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s (last: {value!r})")
        time.sleep(every)


def state_of(client: Any, entity: EntityInstanceId) -> Any:
    metadata = client.get_entity(entity)
    return None if metadata is None else metadata.get_typed_state()


def completed(client: Any, instance_id: str) -> Any:
    state = client.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)
    assert state is not None
    return state


def raw_entity(address: str, entity: EntityInstanceId) -> Any:
    with stub(address) as s:
        return s.GetEntity(pb.GetEntityRequest(instanceId=str(entity), includeState=True))


def locked_by(address: str, entity: EntityInstanceId) -> str | None:
    """Who holds the entity's lock, also while it has no state (then GetEntity says it does not
    exist; a query that includes transient entities lists it)."""
    query = pb.EntityQuery(includeTransient=True)
    query.instanceIdStartsWith.value = str(entity)
    with stub(address) as s:
        found = [
            e
            for e in s.QueryEntities(pb.QueryEntitiesRequest(query=query)).entities
            if e.instanceId == str(entity)
        ]
    return found[0].lockedBy.value if found and found[0].HasField("lockedBy") else None


# --- the client: signal, get, query, clean ----------------------------------------------------


def test_signals_apply_in_order_and_get_entity_reads_the_state(client: Any) -> None:
    counter = EntityInstanceId("Counter", key())
    assert client.get_entity(counter) is None  # never signalled: does not exist
    before = datetime.now(UTC)
    for amount in (1, 2, 3, 4):
        client.signal_entity(counter, "add", amount)
    client.signal_entity(counter, "set", 100)
    client.signal_entity(counter, "add", 5)

    assert eventually(lambda: state_of(client, counter) == 105)
    metadata = client.get_entity(counter)
    assert metadata.id == counter and metadata.includes_state
    assert metadata.get_state() == "105"  # the raw serialized state
    assert metadata.backlog_queue_size == 0 and metadata.get_locked_by() is None
    assert before - timedelta(seconds=1) <= metadata.last_modified <= datetime.now(UTC)
    without = client.get_entity(counter, include_state=False)
    assert without is not None and not without.includes_state and without.get_state() is None


def test_a_delayed_signal_waits_for_its_time(client: Any) -> None:
    counter = EntityInstanceId("Counter", key())
    client.signal_entity(counter, "set", 1)
    eventually(lambda: state_of(client, counter) == 1)
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    client.signal_entity(counter, "add", 10, signal_time=due)
    client.signal_entity(counter, "add", 100)  # not delayed: overtakes the delayed one

    assert eventually(lambda: state_of(client, counter) == 101)
    time.sleep(0.5)
    assert state_of(client, counter) == 101 and datetime.now(UTC) < due
    assert eventually(lambda: state_of(client, counter) == 111)
    assert datetime.now(UTC) >= due


def test_query_entities_filters_by_name_prefix_time_and_pages(client: Any, server: ServerThread) -> None:
    batch = key()
    counters = [EntityInstanceId("Counter", f"{batch}-{n}") for n in range(5)]
    for n, counter in enumerate(counters):
        client.signal_entity(counter, "set", n)
    eventually(lambda: all(state_of(client, c) is not None for c in counters))
    middle = datetime.now(UTC)
    time.sleep(0.05)
    client.signal_entity(counters[0], "add", 100)
    eventually(lambda: state_of(client, counters[0]) == 100)

    everything = client.get_all_entities(
        EntityQuery(instance_id_starts_with=f"@counter@{batch}", page_size=2)
    )
    assert sorted(str(m.id) for m in everything) == sorted(str(c) for c in counters)
    assert {str(m.id): m.get_typed_state() for m in everything}[str(counters[3])] == 3
    # The name part of a prefix is read as the SDKs name entities (lower case, "@" in front).
    assert len(client.get_all_entities(EntityQuery(instance_id_starts_with=f"Counter@{batch}"))) == 5
    recent = client.get_all_entities(
        EntityQuery(instance_id_starts_with=f"@counter@{batch}", last_modified_from=middle)
    )
    assert [str(m.id) for m in recent] == [str(counters[0])]
    older = client.get_all_entities(
        EntityQuery(instance_id_starts_with=f"@counter@{batch}", last_modified_to=middle, include_state=False)
    )
    assert len(older) == 4 and all(not m.includes_state for m in older)

    with stub(server.address) as s:  # one page at a time, by hand
        query = pb.EntityQuery(includeState=True)
        query.instanceIdStartsWith.value = f"@counter@{batch}"
        query.pageSize.value = 2
        pages = []
        while True:
            page = s.QueryEntities(pb.QueryEntitiesRequest(query=query))
            pages.append([e.instanceId for e in page.entities])
            if not page.HasField("continuationToken"):
                break
            query.continuationToken.value = page.continuationToken.value
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(i for p in pages for i in p) == sorted(str(c) for c in counters)


def test_entities_are_not_orchestrations(client: Any, server: ServerThread) -> None:
    counter = EntityInstanceId("Counter", key())
    client.signal_entity(counter, "set", 3)
    eventually(lambda: state_of(client, counter) == 3)
    from durabletask.client import OrchestrationQuery

    listed = client.get_all_orchestration_states(OrchestrationQuery(instance_id_prefix="@counter@"))
    assert listed == []
    with pytest.raises(grpc.RpcError) as refused:
        client.schedule_new_orchestration(read_counter, instance_id=str(counter))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_clean_entity_storage_removes_empty_entities(client: Any) -> None:
    kept, emptied = EntityInstanceId("Counter", key()), EntityInstanceId("Counter", key())
    client.signal_entity(kept, "set", 1)
    client.signal_entity(emptied, "set", 2)
    eventually(lambda: state_of(client, kept) == 1 and state_of(client, emptied) == 2)
    client.signal_entity(emptied, "delete")
    eventually(lambda: client.get_entity(emptied) is None)
    transient = EntityQuery(instance_id_starts_with=str(emptied), include_transient=True)
    assert [str(m.id) for m in client.get_all_entities(transient)] == [str(emptied)]  # a row without state

    result = client.clean_entity_storage(remove_empty_entities=True, release_orphaned_locks=False)

    assert result.empty_entities_removed >= 1
    assert client.get_all_entities(transient) == []
    assert state_of(client, kept) == 1
    client.signal_entity(emptied, "add", 7)  # a removed entity comes back when signalled
    assert eventually(lambda: state_of(client, emptied) == 7)


# --- orchestrations: calls, signals, failures -------------------------------------------------


def test_orchestration_calls_and_signals_an_entity(client: Any) -> None:
    k = key()
    instance_id = client.schedule_new_orchestration(use_counter, input=k)
    state = completed(client, instance_id)
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    output = state.get_output()
    assert output["first"] == 5
    assert output["second"] == 16  # the signal sent in between was applied first
    assert "no way" in output["caught"] and "fail" in output["caught"]
    assert output["after"] == 16  # the failed operation changed nothing
    kinds = [type(e).__name__ for e in client.get_orchestration_history(instance_id)]
    assert kinds.count("EntityOperationCalledEvent") == 4
    assert kinds.count("EntityOperationSignaledEvent") == 1
    assert kinds.count("EntityOperationCompletedEvent") == 3
    assert kinds.count("EntityOperationFailedEvent") == 1


def test_calling_an_entity_nobody_registered_fails_in_the_orchestrator(client: Any) -> None:
    instance_id = client.schedule_new_orchestration(calls_unknown, input=key())
    state = completed(client, instance_id)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.get_output().startswith("failed:")
    assert "nobody_registered_this" in state.get_output()


def test_an_entity_signals_another_and_starts_an_orchestration(client: Any) -> None:
    source, target = EntityInstanceId("Counter", key()), EntityInstanceId("Counter", key())
    client.signal_entity(source, "relay", str(target))
    assert eventually(lambda: state_of(client, target) == 10)
    state = completed(client, f"read-{target.key}")
    assert state.get_output() == 10


def test_function_entities_work_too(client: Any) -> None:
    wallet = EntityInstanceId("account", key())
    client.signal_entity(wallet, "deposit", 30)
    client.signal_entity(wallet, "deposit", -5)
    assert eventually(lambda: state_of(client, wallet) == 25)


# --- critical sections ------------------------------------------------------------------------


def test_critical_sections_never_interleave(client: Any, server: ServerThread) -> None:
    k, times = key(), 6
    ids = [
        client.schedule_new_orchestration(increment_locked, input={"key": k, "times": times})
        for _ in range(3)
    ]
    for instance_id in ids:
        state = completed(client, instance_id)
        assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    counter = EntityInstanceId("Counter", k)
    assert state_of(client, counter) == 3 * times  # no increment lost to another's read-modify-write

    def unlocked() -> bool:
        entity = raw_entity(server.address, counter).entity
        return not entity.HasField("lockedBy") and entity.backlogQueueSize == 0

    # The last orchestration's release is a message to the entity, queued by its final commit:
    # the lock goes soon after the orchestration completes, not necessarily before a client looks.
    assert eventually(unlocked)


def test_two_entities_locked_together_keep_their_total(client: Any) -> None:
    a, b = key(), key()
    client.signal_entity(EntityInstanceId("account", a), "deposit", 20)
    client.signal_entity(EntityInstanceId("account", b), "deposit", 20)
    eventually(lambda: state_of(client, EntityInstanceId("account", b)) == 20)
    ids = [
        client.schedule_new_orchestration(transfer, input={"source": a, "target": b, "times": 5}),
        client.schedule_new_orchestration(transfer, input={"source": b, "target": a, "times": 3}),
        client.schedule_new_orchestration(transfer, input={"source": a, "target": b, "times": 4}),
    ]
    for instance_id in ids:
        assert completed(client, instance_id).runtime_status == OrchestrationStatus.COMPLETED
    assert state_of(client, EntityInstanceId("account", a)) == 20 - 5 + 3 - 4
    assert state_of(client, EntityInstanceId("account", b)) == 20 + 5 - 3 + 4


def test_a_locked_entity_makes_others_wait(client: Any, server: ServerThread) -> None:
    k = key()
    counter = EntityInstanceId("Counter", k)
    client.signal_entity(counter, "set", 1)
    eventually(lambda: state_of(client, counter) == 1)
    holder = client.schedule_new_orchestration(hold_lock, input=[k])
    eventually(lambda: client.get_orchestration_state(holder).serialized_custom_status == '"locked"')
    assert raw_entity(server.address, counter).entity.lockedBy.value == holder

    client.signal_entity(counter, "add", 5)  # waits for the lock
    waiter = client.schedule_new_orchestration(lock_once, input=[k])
    assert eventually(lambda: raw_entity(server.address, counter).entity.backlogQueueSize == 2)
    assert state_of(client, counter) == 1

    client.raise_orchestration_event(holder, "release")
    assert completed(client, holder).get_output() == "released"
    assert completed(client, waiter).get_output() == 7  # the signal came first, in arrival order
    assert eventually(lambda: not raw_entity(server.address, counter).entity.HasField("lockedBy"))


def test_clean_entity_storage_releases_a_lock_orphaned_by_a_terminated_orchestration(
    client: Any, server: ServerThread
) -> None:
    first, second = sorted((key(), key()))
    holder = client.schedule_new_orchestration(hold_lock, input=[first])
    eventually(lambda: client.get_orchestration_state(holder).serialized_custom_status == '"locked"')
    # Waits for `first`, then would lock `second`; terminated meanwhile, it can no longer unlock.
    doomed = client.schedule_new_orchestration(hold_lock, input=[first, second])
    client.wait_for_orchestration_start(doomed, timeout=TIMEOUT)
    time.sleep(0.3)
    client.terminate_orchestration(doomed)
    assert completed(client, doomed).runtime_status == OrchestrationStatus.TERMINATED
    client.raise_orchestration_event(holder, "release")
    completed(client, holder)
    second_id = EntityInstanceId("Counter", second)
    assert eventually(lambda: locked_by(server.address, second_id) == doomed)
    assert client.get_entity(second_id) is None  # locked, but without state: transient

    result = client.clean_entity_storage(remove_empty_entities=False, release_orphaned_locks=True)

    assert result.orphaned_locks_released >= 1
    assert eventually(lambda: locked_by(server.address, second_id) is None)
    again = client.schedule_new_orchestration(lock_once, input=[second])
    assert completed(client, again).get_output() == 1


# --- the protocol's ugly paths ----------------------------------------------------------------


def test_a_stale_completion_token_is_refused(server: ServerThread) -> None:
    with stub(server.address) as s:
        result = pb.EntityBatchResult(completionToken="no-such-token")
        result.results.add().success.result.value = "1"
        with pytest.raises(grpc.RpcError) as refused:
            s.CompleteEntityTask(result)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as bad_signal:
            s.SignalEntity(pb.SignalEntityRequest(instanceId="not-an-entity", name="add"))
        assert bad_signal.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_entity_work_items_and_their_completion_over_the_raw_protocol(tmp_path: Path) -> None:
    """Both work-item forms; a batch handed back (its worker went away) comes again; the old
    token is then refused, and the state is applied once."""
    import asyncio

    async def scenario(v2: bool) -> None:
        server = ServerThread(storage=f"sqlite:///{tmp_path / f'raw-{v2}.db'}", entity_request_v2=v2)
        try:
            with stub(server.address) as s:
                s.SignalEntity(
                    pb.SignalEntityRequest(instanceId="@counter@raw", name="add", input={"value": "2"})
                )
            async with RawWorker(server.address) as first:
                await first.connect(maxConcurrentEntityWorkItems=5)
                item = await first.next()
            async with RawWorker(server.address) as second:
                await second.connect()
                again = await second.next()
                assert again.completionToken != item.completionToken
                field = "entityRequestV2" if v2 else "entityRequest"
                assert again.WhichOneof("request") == field
                request = getattr(again, field)
                assert request.instanceId == "@counter@raw" and not request.HasField("entityState")
                if v2:
                    (op,) = request.operationRequests
                    assert (op.entityOperationSignaled.operation, op.entityOperationSignaled.input.value) == (
                        "add",
                        "2",
                    )
                else:
                    (op,) = request.operations
                    assert (op.operation, op.input.value) == ("add", "2")
                result = pb.EntityBatchResult(completionToken=again.completionToken)
                result.results.add().success.result.value = "2"
                result.entityState.value = "2"
                stale = pb.EntityBatchResult()
                stale.CopyFrom(result)
                stale.completionToken = item.completionToken
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await second.stub.CompleteEntityTask(stale)
                assert refused.value.code() == grpc.StatusCode.NOT_FOUND
                await second.stub.CompleteEntityTask(result)
                with pytest.raises(grpc.aio.AioRpcError):
                    await second.stub.CompleteEntityTask(result)  # once only
                response = await second.stub.GetEntity(
                    pb.GetEntityRequest(instanceId="@counter@raw", includeState=True)
                )
                assert response.exists and response.entity.serializedState.value == "2"
        finally:
            server.stop()

    for v2 in (True, False):
        asyncio.run(scenario(v2))


WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from durabletask import worker
    from durabletask.entities import EntityContext

    marker = Path(sys.argv[2])

    def slowcounter(ctx: EntityContext, amount):
        marker.write_text("started")
        time.sleep(60)  # killed long before this ends

    w = worker.TaskHubGrpcWorker(host_address=sys.argv[1])
    w.add_entity(slowcounter)
    w.start()
    time.sleep(120)
    """
)


def slowcounter(ctx: EntityContext, amount: int) -> int:
    value: int = ctx.get_state(int, 0) + amount
    ctx.set_state(value)
    return value


def test_a_batch_of_a_worker_killed_mid_batch_runs_again_and_applies_once(
    tmp_path: Path, flavour: str
) -> None:
    if flavour != "durabletask":
        pytest.skip("one flavour is enough: the worker is killed, whatever its package")
    server = ServerThread(storage=f"sqlite:///{tmp_path / 'killed.db'}")
    marker = tmp_path / "started"
    script = tmp_path / "slow_worker.py"
    script.write_text(WORKER_SCRIPT)
    doomed = subprocess.Popen(
        [sys.executable, str(script), server.address, str(marker)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    survivor = None
    c = make_client("durabletask", server.address)
    try:
        entity = EntityInstanceId("slowcounter", "k")
        c.signal_entity(entity, "add", 3)
        c.signal_entity(entity, "add", 4)
        eventually(marker.exists)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        assert c.get_entity(entity) is None  # nothing of the batch was stored

        survivor = make_worker("durabletask", server.address)
        survivor.add_entity(slowcounter)
        survivor.start()
        assert eventually(lambda: state_of(c, entity) == 7)
        c.signal_entity(entity, "add", 1)
        assert eventually(lambda: state_of(c, entity) == 8)  # each operation applied once
    finally:
        if doomed.poll() is None:
            doomed.kill()
        if survivor is not None:
            survivor.stop()
        c.close()
        server.stop()
