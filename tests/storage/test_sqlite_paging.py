"""SQLite: the page plans of ``query_instances`` (paging.py) and batched purges (purge.py).

Thousands of rows are written straight into a real database file (the storage's own INSERT
statements and row format), then read and purged through the storage. Every plan must return
exactly what a brute-force filter and sort of the same rows returns, page after page.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from duratask.history import OrchestratorStarted, encode_event
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.storage.base import InstanceFilter, InstanceRecord, PageCursor
from duratask.storage.sqlite import SqliteStorage
from duratask.storage.sqlite.paging import narrow_prefix_bound, page_query
from duratask.storage.sqlite.purge import PURGE_BATCH
from duratask.storage.sqlite.rows import instance_params
from duratask.storage.sqlite.sql import Q

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = [Status.COMPLETED, Status.RUNNING, Status.FAILED, Status.PENDING, Status.TERMINATED]
#: 'wide-' is shared by more instances than the narrow bound of a small table, 'few-' by far fewer.
WIDE, FEW, OTHER = 2400, 40, 600


def _records() -> list[InstanceRecord]:
    records = []
    for prefix, count in (("wide-", WIDE), ("few-", FEW), ("zz-", OTHER)):
        for n in range(count):
            # Creation times collide in runs, so the id must break ties; ids are not in time order.
            created = T0 + timedelta(seconds=(n * 7919) % 500)
            records.append(
                InstanceRecord(
                    instance_id=f"{prefix}{(n * 104729) % 100000:05}",
                    name="o",
                    execution_id="e",
                    status=STATUSES[n % len(STATUSES)],
                    created_at=created,
                    last_updated_at=created,
                )
            )
    return records


RECORDS = _records()
EVENT = encode_event(OrchestratorStarted(timestamp=T0))


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    path = str(tmp_path / "paging.db")
    storage = SqliteStorage(path)
    await storage.open()  # creates the schema
    with sqlite3.connect(path) as conn:
        conn.executemany(Q.insert_instance, [instance_params("default", r) for r in RECORDS])
        conn.executemany(
            Q.insert_history,
            [
                {"taskhub": "default", "instance_id": r.instance_id, "seq": seq, "event": EVENT}
                for r in RECORDS
                for seq in range(3)
            ],
        )
    yield storage
    await storage.close()


def _expected(filter: InstanceFilter) -> list[str]:
    def keep(r: InstanceRecord) -> bool:
        return (
            (not filter.statuses or r.status in filter.statuses)
            and (filter.instance_id_prefix is None or r.instance_id.startswith(filter.instance_id_prefix))
            and (filter.created_from is None or r.created_at >= filter.created_from)
            and (filter.created_to is None or r.created_at <= filter.created_to)
        )

    matches = [r for r in RECORDS if keep(r)]
    return [r.instance_id for r in sorted(matches, key=lambda r: (r.created_at, r.instance_id))]


async def _all_pages(storage: SqliteStorage, filter: InstanceFilter, limit: int) -> list[str]:
    seen: list[str] = []
    after: PageCursor | None = None
    while True:
        page = await storage.query_instances(filter, limit, after)
        assert len(page) <= limit
        seen += [r.instance_id for r in page]
        if len(page) < limit:
            return seen
        after = PageCursor(page[-1].created_at, page[-1].instance_id)


FILTERS = [
    InstanceFilter(),
    InstanceFilter(statuses=[Status.RUNNING]),
    InstanceFilter(statuses=[Status.COMPLETED, Status.FAILED, Status.TERMINATED]),
    InstanceFilter(statuses=[Status.SUSPENDED]),  # none
    InstanceFilter(instance_id_prefix="wide-"),  # broad: ordered scan, prefix tested on the index
    InstanceFilter(instance_id_prefix="few-"),  # narrow: key range, sorted
    InstanceFilter(instance_id_prefix="nobody-"),
    InstanceFilter(statuses=[Status.RUNNING, Status.PENDING], instance_id_prefix="wide-"),
    InstanceFilter(statuses=[Status.FAILED], instance_id_prefix="few-"),
    InstanceFilter(created_from=T0 + timedelta(seconds=100), created_to=T0 + timedelta(seconds=130)),
    InstanceFilter(
        statuses=[Status.COMPLETED, Status.RUNNING],
        instance_id_prefix="wide-",
        created_from=T0 + timedelta(seconds=50),
        created_to=T0 + timedelta(seconds=300),
    ),
]


@pytest.mark.parametrize("filter", FILTERS, ids=lambda f: repr(f)[15:80])
async def test_every_plan_pages_through_exactly_the_matches_in_order(
    storage: SqliteStorage, filter: InstanceFilter
) -> None:
    expected = _expected(filter)
    assert await _all_pages(storage, filter, 37) == expected
    first = await storage.query_instances(filter, 5, None)
    assert [r.instance_id for r in first] == expected[:5]


def _plan(storage_path: Path, filter: InstanceFilter, narrow: bool) -> str:
    sql, params = page_query("default", filter, 100, None, narrow_prefix=narrow)
    with sqlite3.connect(storage_path) as conn:
        return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


async def test_plans_use_the_ordered_indexes(storage: SqliteStorage, tmp_path: Path) -> None:
    path = tmp_path / "paging.db"
    by_status = _plan(path, InstanceFilter(statuses=[Status.RUNNING, Status.FAILED]), narrow=False)
    assert by_status.count("instances_by_status") == 2 and "MERGE" in by_status
    assert "instances_by_created" in _plan(path, InstanceFilter(instance_id_prefix="wide-"), narrow=False)
    assert "autoindex_instances" in _plan(path, InstanceFilter(instance_id_prefix="few-"), narrow=True)


def test_the_narrow_prefix_bound_grows_with_the_square_root_of_the_table() -> None:
    assert narrow_prefix_bound(0) == narrow_prefix_bound(10_000) == 1000
    assert narrow_prefix_bound(1_000_000) == 3000
    assert narrow_prefix_bound(100_000_000) == 30_000


async def test_a_purge_by_filter_larger_than_a_batch_takes_every_terminal_match(
    storage: SqliteStorage,
) -> None:
    more = [
        InstanceRecord(
            instance_id=f"bulk-{n:05}",
            name="o",
            execution_id="e",
            status=Status.COMPLETED,
            created_at=T0,
            last_updated_at=T0,
        )
        for n in range(PURGE_BATCH + 10)
    ]
    with sqlite3.connect(storage.path) as conn:
        conn.executemany(Q.insert_instance, [instance_params("default", r) for r in more])

    purged = await storage.delete_instances_matching(InstanceFilter(statuses=[Status.COMPLETED]))

    completed_before = sum(r.status is Status.COMPLETED for r in RECORDS)
    assert purged == PURGE_BATCH + 10 + completed_before
    assert await storage.query_instances(InstanceFilter(statuses=[Status.COMPLETED]), 10, None) == []
    assert await _all_pages(storage, InstanceFilter(), 500) == _expected(
        InstanceFilter(statuses=[s for s in STATUSES if s is not Status.COMPLETED])
    )
    gone = next(r.instance_id for r in RECORDS if r.status is Status.COMPLETED)
    assert await storage.get_history(gone) == []
    kept = next(r.instance_id for r in RECORDS if r.status is Status.RUNNING)
    assert len(await storage.get_history(kept)) == 3


async def test_purge_by_ids_counts_each_terminal_id_once(storage: SqliteStorage) -> None:
    done = [r.instance_id for r in RECORDS if r.status is Status.FAILED][:3]
    live = next(r.instance_id for r in RECORDS if r.status is Status.RUNNING)

    assert await storage.delete_instances([*done, done[0], live, "ghost"]) == 3
    assert [await storage.get_instance(instance_id) for instance_id in done] == [None, None, None]
    assert await storage.get_instance(live) is not None
