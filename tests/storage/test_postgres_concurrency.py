"""Many leasers (processes, each with several connections) on one PostgreSQL hub never share work."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import msgspec

from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.storage.base import InstanceFilter, OrchestrationCommit, OrchestrationLease
from duratask.storage.postgres import PostgresStorage, open_postgres_storage
from tests.pgserver import unique_name

from .builders import LONG, activity, completion, create, message, raised
from .sqlite_process import complete_leased

PROCESSES = 4
TASKS_PER_PROCESS = 4
INSTANCES = 240


async def _lease_until_done(storage: PostgresStorage, out: list[str]) -> None:
    """Lease (a few at a time), then complete what was leased, until no instance is left unfinished."""
    unfinished = InstanceFilter(statuses=[Status.PENDING, Status.RUNNING])
    while True:
        leases = await storage.lease_orchestrations(3, LONG)
        if not leases:
            if not await storage.query_instances(unfinished, 1, None):
                return
            await asyncio.sleep(0.005)
            continue
        await complete_leased(storage, leases, out)


async def _leaser_process(url: str, hub: str) -> list[str]:
    storage = PostgresStorage(url, hub, max_connections=TASKS_PER_PROCESS)
    await storage.open()
    try:
        outs: list[list[str]] = [[] for _ in range(TASKS_PER_PROCESS)]
        await asyncio.gather(*(_lease_until_done(storage, out) for out in outs))
        return [instance_id for out in outs for instance_id in out]
    finally:
        await storage.close()


def run_leaser(url: str, hub: str) -> list[str]:
    """Entry point of a leasing process."""
    return asyncio.run(_leaser_process(url, hub))


async def test_concurrent_leasing_processes_never_share_an_instance(pg_url: str) -> None:
    hub = unique_name("hub")
    storage = await open_postgres_storage(pg_url, hub)
    try:
        ids = [f"i{n:04}" for n in range(INSTANCES)]
        for instance_id in ids:
            await create(storage, instance_id)
        # Several visible messages per instance: the lease scan meets most instances more than once.
        await storage.enqueue([message(i, raised(f"e{k}")) for i in ids[::2] for k in range(3)])

        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = await asyncio.gather(
                *(loop.run_in_executor(pool, run_leaser, pg_url, hub) for _ in range(PROCESSES))
            )
        leased = [instance_id for result in results for instance_id in result]

        assert sorted(leased) == ids  # each instance leased exactly once, by exactly one leaser
        assert sum(1 for result in results if result) >= 2  # the work really was shared
        for instance_id in ids[::2]:
            assert len(await storage.get_history(instance_id)) == 4  # started + 3 events, in one episode
    finally:
        await storage.close()


async def test_many_leasers_in_one_process_never_share_an_instance(pg_url: str) -> None:
    """Heavier contention than across processes: 32 leasers taking one instance at a time."""
    hub = unique_name("hub")
    storages = [PostgresStorage(pg_url, hub, max_connections=4) for _ in range(8)]
    for storage in storages:
        await storage.open()
    try:
        ids = [f"i{n:04}" for n in range(400)]
        for instance_id in ids:
            await create(storages[0], instance_id)

        async def lease_one_at_a_time(storage: PostgresStorage, out: list[str]) -> None:
            while leases := await storage.lease_orchestrations(1, LONG):
                (lease,) = leases
                done = msgspec.structs.replace(lease.instance, status=Status.COMPLETED)
                commit = OrchestrationCommit(
                    token=lease.token, instance=done, history_append=lease.new_events
                )
                assert await storage.commit_orchestrations([commit]) == [True]
                out.append(lease.instance.instance_id)

        outs: list[list[str]] = [[] for _ in range(32)]
        await asyncio.gather(*(lease_one_at_a_time(storages[n % 8], out) for n, out in enumerate(outs)))
        assert sorted(i for out in outs for i in out) == ids
    finally:
        for storage in storages:
            await storage.close()


async def test_concurrent_activity_leasers_never_share_an_activity(pg_url: str) -> None:
    hub = unique_name("hub")
    storages = [PostgresStorage(pg_url, hub, max_connections=4) for _ in range(4)]
    for storage in storages:
        await storage.open()
    try:
        main = storages[0]
        await create(main, "a")
        lease = (await main.lease_orchestrations(1, LONG))[0]
        commit = OrchestrationCommit(
            token=lease.token,
            instance=msgspec.structs.replace(lease.instance, status=Status.RUNNING),
            history_append=lease.new_events,
            activities=[activity("a", n) for n in range(300)],
        )
        assert await main.commit_orchestrations([commit]) == [True]

        async def drain(storage: PostgresStorage, out: list[int]) -> None:
            while leases := await storage.lease_activities(5, LONG):
                assert all(await storage.complete_activities([completion(lease) for lease in leases]))
                out.extend(lease.task.task_id for lease in leases)

        outs: list[list[int]] = [[] for _ in range(16)]
        await asyncio.gather(*(drain(storages[n % 4], out) for n, out in enumerate(outs)))

        assert sorted(task_id for out in outs for task_id in out) == list(range(300))
        results = [e for e in (await main.lease_orchestrations(1, LONG))[0].new_events]
        assert len(results) == 300
    finally:
        for storage in storages:
            await storage.close()


class _Retries(logging.Handler):
    """Collects the storage's "retrying" warnings (a deadlock shows up as one)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_instances_messaging_each_other_commit_concurrently_without_deadlocks(pg_url: str) -> None:
    """Each commit locks its own instance and sends to the other's: no lock order can deadlock them."""
    retries = _Retries()
    logging.getLogger("duratask.storage.postgres").addHandler(retries)
    hub = unique_name("hub")
    one, two = PostgresStorage(pg_url, hub), PostgresStorage(pg_url, hub)
    await one.open()
    await two.open()
    try:
        await create(one, "ping")
        await create(one, "pong")
        for _ in range(10):
            leases = {lease.instance.instance_id: lease for lease in await one.lease_orchestrations(2, LONG)}
            assert set(leases) == {"ping", "pong"}
            results = await asyncio.gather(
                one.commit_orchestrations([_sending(leases["ping"], "pong")]),
                two.commit_orchestrations([_sending(leases["pong"], "ping")]),
            )
            assert results == [[True], [True]]
    finally:
        await one.close()
        await two.close()
        logging.getLogger("duratask.storage.postgres").removeHandler(retries)
    assert not [m for m in retries.messages if "deadlock" in m]


def _sending(lease: OrchestrationLease, to: str) -> OrchestrationCommit:
    return OrchestrationCommit(
        token=lease.token,
        instance=msgspec.structs.replace(lease.instance, status=Status.RUNNING),
        history_append=lease.new_events,
        messages=[message(to, raised("ball"))],
    )
