"""A storage that says ``notifies_entities`` wakes ENTITIES waiters for messages queued for
entities ("@name@key"), and only for those: an entity pump sleeps through orchestration traffic.
ORCHESTRATIONS still wakes for every message, as it always did. Other storages are skipped."""

from __future__ import annotations

import pytest

from duratask.backend import entities
from duratask.notify import ENTITIES, ENTITY_ID_PREFIX, ORCHESTRATIONS, inbox_topics
from duratask.storage.base import Storage

from .builders import commit_of, create, lease_all, lease_only, message, raised
from .test_notifications import _woken

ENTITY = "@counter@one"


@pytest.fixture(autouse=True)
def _only_storages_that_tell_entities_apart(storage: Storage) -> None:
    if not getattr(storage, "notifies_entities", False):
        pytest.skip("this storage wakes entity waiters with ORCHESTRATIONS")


def test_the_prefix_is_the_one_entities_use() -> None:
    assert ENTITY_ID_PREFIX == entities.ENTITY_ID_PREFIX
    assert inbox_topics(["a", "b"]) == (ORCHESTRATIONS,)
    assert inbox_topics(["a", ENTITY]) == (ORCHESTRATIONS, ENTITIES)


async def test_creating_and_messaging_an_entity_wakes_entity_waiters(storage: Storage) -> None:
    assert await _woken(storage, create(storage, ENTITY), ORCHESTRATIONS, ENTITIES) == {
        ORCHESTRATIONS: True,
        ENTITIES: True,
    }
    woken = await _woken(storage, storage.enqueue([message(ENTITY, raised("op"))]), ENTITIES)
    assert woken == {ENTITIES: True}


async def test_orchestration_traffic_leaves_entity_waiters_asleep(storage: Storage) -> None:
    assert await _woken(storage, create(storage, "a"), ORCHESTRATIONS, ENTITIES) == {
        ORCHESTRATIONS: True,
        ENTITIES: False,
    }
    lease = await lease_only(storage)
    woken = await _woken(
        storage,
        storage.commit_orchestrations([commit_of(lease, messages=[message("a", raised("self"))])]),
        ORCHESTRATIONS,
        ENTITIES,
    )
    assert woken == {ORCHESTRATIONS: True, ENTITIES: False}


async def test_an_orchestration_messaging_an_entity_wakes_entity_waiters(storage: Storage) -> None:
    await create(storage, "a")
    await create(storage, ENTITY)
    leases = await lease_all(storage)
    commit = commit_of(leases["a"], messages=[message(ENTITY, raised("op"))])
    woken = await _woken(storage, storage.commit_orchestrations([commit]), ENTITIES)
    assert woken == {ENTITIES: True}


async def test_an_entity_committed_with_messages_waiting_wakes_entity_waiters(storage: Storage) -> None:
    await create(storage, ENTITY)
    lease = await lease_only(storage)
    await storage.enqueue([message(ENTITY, raised("meanwhile"))])
    woken = await _woken(storage, storage.commit_orchestrations([commit_of(lease)]), ENTITIES)
    assert woken == {ENTITIES: True}


async def test_an_entity_lease_given_back_wakes_entity_waiters(storage: Storage) -> None:
    await create(storage, ENTITY)
    lease = await lease_only(storage)
    abandon = storage.abandon_orchestration(ENTITY, lease.token)
    assert await _woken(storage, abandon, ENTITIES) == {ENTITIES: True}
