"""Contract: leases scoped by an id prefix, and deleting idle instances (what durable entities,
instances with ids ``@name@key``, need from a storage)."""

from __future__ import annotations

import asyncio

from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.storage.base import Storage

from .builders import LONG, SHORT, activity, commit_of, create, expire, lease_only, message, raised, running


async def test_a_lease_takes_only_ids_with_its_prefix(storage: Storage) -> None:
    for instance_id in ("@counter@a", "order-1", "@counter@b", "@@x", "order-@"):
        await create(storage, instance_id)

    entities = await storage.lease_orchestrations(10, LONG, id_prefix="@")
    assert sorted(lease.instance.instance_id for lease in entities) == ["@@x", "@counter@a", "@counter@b"]
    others = await storage.lease_orchestrations(10, LONG)
    assert sorted(lease.instance.instance_id for lease in others) == ["order-1", "order-@"]


async def test_a_lease_skips_ids_with_the_excluded_prefix(storage: Storage) -> None:
    for instance_id in ("@counter@a", "order-1", "@counter@b"):
        await create(storage, instance_id)

    (order,) = await storage.lease_orchestrations(10, LONG, exclude_id_prefix="@")
    assert order.instance.instance_id == "order-1"
    assert await storage.lease_orchestrations(10, LONG, exclude_id_prefix="@") == []
    # A prefix is literal: nothing in it is a wildcard.
    assert await storage.lease_orchestrations(10, LONG, id_prefix="@%") == []
    assert await storage.lease_orchestrations(10, LONG, id_prefix="_") == []
    assert len(await storage.lease_orchestrations(10, LONG, id_prefix="@counter@")) == 2


async def test_an_idle_instance_is_deleted_whatever_its_status(storage: Storage) -> None:
    lease = await running(storage, "@counter@a")
    assert lease.instance.status is Status.PENDING
    assert (await storage.get_instance("@counter@a")).status is Status.RUNNING  # type: ignore[union-attr]

    assert await storage.delete_idle_instances(["@counter@a", "@counter@a", "ghost"]) == 1
    assert await storage.get_instance("@counter@a") is None
    assert await storage.get_history("@counter@a") == []
    assert await storage.delete_idle_instances([]) == 0


async def test_an_instance_with_messages_a_lease_or_activities_is_not_idle(storage: Storage) -> None:
    await create(storage, "fresh")  # its start message waits in the inbox
    await running(storage, "messaged")
    await running(storage, "leased")
    await create(storage, "busy")
    await storage.enqueue([message("messaged", raised("ping")), message("leased", raised("ping"))])
    (leased,) = await storage.lease_orchestrations(10, LONG, id_prefix="leased")
    (busy,) = await storage.lease_orchestrations(10, LONG, id_prefix="busy")
    # Its inbox is empty after this, but an activity is queued for it.
    assert await storage.commit_orchestrations([commit_of(busy, activities=[activity("busy", 0)])]) == [True]

    assert await storage.delete_idle_instances(["fresh", "messaged", "leased", "busy"]) == 0
    for instance_id in ("fresh", "messaged", "leased", "busy"):
        assert await storage.get_instance(instance_id) is not None
    assert await storage.commit_orchestrations([commit_of(leased)]) == [True]
    assert await storage.delete_idle_instances(["leased"]) == 1


async def test_an_instance_whose_lease_expired_with_messages_is_not_idle(storage: Storage) -> None:
    await running(storage, "a")
    await storage.enqueue([message("a", raised("ping"))])
    await lease_only(storage, lease_seconds=SHORT)
    await expire()
    assert await storage.delete_idle_instances(["a"]) == 0
    again = await lease_only(storage)
    assert await storage.commit_orchestrations([commit_of(again)]) == [True]
    assert await storage.delete_idle_instances(["a"]) == 1


async def test_a_message_racing_a_delete_is_kept_or_finds_the_instance_gone(storage: Storage) -> None:
    for round_ in range(20):
        instance_id = f"@race@{round_}"
        await running(storage, instance_id)
        deleted, _ = await asyncio.gather(
            storage.delete_idle_instances([instance_id]),
            storage.enqueue([message(instance_id, raised("ping"))]),
        )
        record = await storage.get_instance(instance_id)
        if deleted:
            assert record is None
            assert await storage.lease_orchestrations(10, LONG, id_prefix=instance_id) == []
        else:
            assert record is not None
            (lease,) = await storage.lease_orchestrations(10, LONG, id_prefix=instance_id)
            assert [e.name for e in lease.new_events] == ["ping"]  # type: ignore[union-attr]
            assert await storage.commit_orchestrations([commit_of(lease)]) == [True]
