"""PostgreSQL at scale: 1,000,000 instances, filtered pages under 50 ms, a 100k purge under 30 s.

Opt-in (it loads a million rows, a minute or so): ``DURATASK_PG_SCALE=1 pytest tests/storage/test_postgres_scale.py -s``.
The data is written by SQL directly (the storage API would take far longer), shaped like real use:
most instances finished, some running, a few pending with a message each, two history rows each.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.storage.base import InstanceFilter, PageCursor
from duratask.storage.postgres import PostgresStorage, migrate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("DURATASK_PG_SCALE"), reason="set DURATASK_PG_SCALE=1 to run"),
]

INSTANCES = 1_000_000
T0 = datetime(2025, 1, 1, tzinfo=UTC)
SPREAD_SECONDS = 30 * 24 * 3600  # created over 30 days, evenly by id number
PAGE_BUDGET_MS = 50.0
PURGE_BUDGET_S = 30.0

# status by id number n: n % 20 -> 0..13 COMPLETED (70%), 14,15 FAILED (10%), 16..18 RUNNING (15%), 19 PENDING (5%)
_LOAD = """
INSERT INTO duratask_instances (taskhub, instance_id, name, execution_id, status, created_at, last_updated_at,
                                input, output, history_length)
SELECT 'scale', 'order-' || lpad(n::text, 7, '0'), 'process_order', md5(n::text),
       CASE WHEN n %% 20 < 14 THEN 1 WHEN n %% 20 < 16 THEN 3 WHEN n %% 20 < 19 THEN 0 ELSE 6 END,
       %(t0)s::timestamptz + make_interval(secs => n * %(step)s::float8),
       %(t0)s::timestamptz + make_interval(secs => n * %(step)s::float8 + 5),
       '{"order": ' || n || '}', CASE WHEN n %% 20 < 14 THEN '"ok"' END, 2
FROM generate_series(0, %(count)s - 1) AS n;
INSERT INTO duratask_history (taskhub, instance_id, seq, event)
SELECT 'scale', i.instance_id, s.seq, convert_to('{"type":"EventRaised","timestamp":"2025-01-01T00:00:00Z","name":"x"}', 'UTF8')
FROM duratask_instances AS i CROSS JOIN generate_series(0, 1) AS s(seq) WHERE i.taskhub = 'scale'
  AND %(count)s > 0;
INSERT INTO duratask_inbox (taskhub, instance_id, visible_at, event)
SELECT 'scale', instance_id, created_at,
       convert_to('{"type":"EventRaised","timestamp":"2025-01-01T00:00:00Z","name":"x"}', 'UTF8')
FROM duratask_instances WHERE taskhub = 'scale' AND status = 6 AND %(count)s > 0;
ANALYZE;
"""


async def _median_ms(call: Callable[[], Awaitable[object]], runs: int = 7) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        await call()
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


async def test_a_million_instances(pg_fresh_url: str) -> None:
    await migrate(pg_fresh_url)
    started = time.perf_counter()
    with psycopg.connect(pg_fresh_url, autocommit=True) as conn:
        params = {"t0": T0, "step": SPREAD_SECONDS / INSTANCES, "count": INSTANCES}
        for statement in filter(str.strip, _LOAD.split(";\n")):
            conn.execute(statement, params if "%(" in statement else None)
    print(f"\nloaded {INSTANCES:,} instances in {time.perf_counter() - started:.1f} s")

    storage = PostgresStorage(pg_fresh_url, "scale")
    await storage.open()
    try:
        middle = PageCursor(T0 + timedelta(days=15), "order-0500000")
        pages: dict[str, InstanceFilter] = {
            "no filter": InstanceFilter(),
            "RUNNING": InstanceFilter(statuses=[Status.RUNNING]),
            "RUNNING|PENDING|FAILED": InstanceFilter(statuses=[Status.RUNNING, Status.PENDING, Status.FAILED]),
            "PENDING, created in a day": InstanceFilter(
                statuses=[Status.PENDING], created_from=T0 + timedelta(days=3), created_to=T0 + timedelta(days=4)
            ),
            "prefix (1,000 ids)": InstanceFilter(instance_id_prefix="order-0123"),
            "prefix + RUNNING": InstanceFilter(instance_id_prefix="order-0123", statuses=[Status.RUNNING]),
            "prefix, no match": InstanceFilter(instance_id_prefix="zzz"),
        }
        for label, instance_filter in pages.items():
            for after in (None, middle):
                rows = await storage.query_instances(instance_filter, 101, after)
                ms = await _median_ms(functools.partial(storage.query_instances, instance_filter, 101, after))
                print(f"page of {len(rows):3} [{label}{', from the middle' if after else ''}]: {ms:.1f} ms")
                assert ms < PAGE_BUDGET_MS, (label, after, ms)

        ms = await _median_ms(lambda: storage.next_visible_at())
        print(f"next_visible_at: {ms:.1f} ms")
        lease_ms = []
        for _ in range(5):
            start = time.perf_counter()
            leases = await storage.lease_orchestrations(50, 60)
            lease_ms.append((time.perf_counter() - start) * 1000)
            assert len(leases) == 50
        print(f"lease 50 of 50,000 ready instances: {statistics.median(lease_ms):.1f} ms")
        assert statistics.median(lease_ms) < PAGE_BUDGET_MS * 4

        # COMPLETED in the first 7 days and a bit: ~70% of 1M * (7.2/30) = ~100k instances.
        purge = InstanceFilter(statuses=[Status.COMPLETED], created_to=T0 + timedelta(days=30 * 100_000 / 700_000))
        start = time.perf_counter()
        purged = await storage.delete_instances_matching(purge)
        seconds = time.perf_counter() - start
        print(f"purged {purged:,} instances (with their history) in {seconds:.1f} s")
        assert 95_000 <= purged <= 105_000
        assert seconds < PURGE_BUDGET_S
        assert await storage.query_instances(purge, 1, None) == []
    finally:
        await storage.close()
