"""The measured operations, through the public client only: pages of `get_all_instances` under
several filters (first page, and a page deep in the results by continuation token), and
`purge_all_instances` of successive windows of completed instances."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bench.scale.dataset import Spec, StoredInstance
from duratask import DurableTaskClient, OrchestrationQuery, PurgeInstancesFilter
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.storage.base import InstanceRecord

PAGE_SIZE = 100
#: Page size used to walk to a deep page (not measured): the token it returns is as good as any.
SKIP_PAGE_SIZE = 10_000


@dataclass(frozen=True)
class Filter:
    """One listing filter: its client query (for a dataset) and the same test in Python, to count matches."""

    label: str
    query: Callable[[Spec], dict[str, Any]]
    matches: Callable[[Spec, InstanceRecord], bool]


def _day(spec: Spec, day: int) -> tuple[datetime, datetime]:
    begin = spec.start + timedelta(days=day)
    return begin, begin + timedelta(days=1) - timedelta(microseconds=1)


def _in_day(spec: Spec, record: InstanceRecord, day: int) -> bool:
    begin, end = _day(spec, day)
    return begin <= record.created_at <= end


_DAY = 10  # a day in the middle of the dataset's creation span

FILTERS = (
    Filter("no filter", lambda s: {}, lambda s, r: True),
    Filter(
        "status RUNNING",
        lambda s: {"runtime_status": [Status.RUNNING]},
        lambda s, r: r.status is Status.RUNNING,
    ),
    Filter(
        "status FAILED", lambda s: {"runtime_status": [Status.FAILED]}, lambda s, r: r.status is Status.FAILED
    ),
    Filter(
        "status COMPLETED|FAILED|TERMINATED",
        lambda s: {"runtime_status": [Status.COMPLETED, Status.FAILED, Status.TERMINATED]},
        lambda s, r: r.status in (Status.COMPLETED, Status.FAILED, Status.TERMINATED),
    ),
    Filter(
        "prefix 'invoice-'",
        lambda s: {"instance_id_prefix": "invoice-"},
        lambda s, r: r.instance_id.startswith("invoice-"),
    ),
    Filter(
        "prefix 'invoice-a7' (narrow)",
        lambda s: {"instance_id_prefix": "invoice-a7"},
        lambda s, r: r.instance_id.startswith("invoice-a7"),
    ),
    Filter(
        "status FAILED + prefix 'order-'",
        lambda s: {"runtime_status": [Status.FAILED], "instance_id_prefix": "order-"},
        lambda s, r: r.status is Status.FAILED and r.instance_id.startswith("order-"),
    ),
    Filter(
        "status RUNNING + prefix 'refund-a' (sparse)",
        lambda s: {"runtime_status": [Status.RUNNING], "instance_id_prefix": "refund-a"},
        lambda s, r: r.status is Status.RUNNING and r.instance_id.startswith("refund-a"),
    ),
    Filter(
        "created within one day",
        lambda s: dict(zip(("created_from", "created_to"), _day(s, _DAY), strict=True)),
        lambda s, r: _in_day(s, r, _DAY),
    ),
    Filter(
        "created within one day + status RUNNING",
        lambda s: {
            **dict(zip(("created_from", "created_to"), _day(s, _DAY), strict=True)),
            "runtime_status": [Status.RUNNING],
        },
        lambda s, r: _in_day(s, r, _DAY) and r.status is Status.RUNNING,
    ),
)


@dataclass
class Tally:
    """What the loader wrote, counted on the way: matches per filter and the purge windows."""

    spec: Spec
    purge_size: int
    counts: dict[str, int] = field(default_factory=lambda: {f.label: 0 for f in FILTERS})
    instances: int = 0
    history_events: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    #: (created_from, created_to) of each run of `purge_size` consecutive completed instances
    purge_windows: list[tuple[datetime, datetime]] = field(default_factory=list)
    _window_start: datetime | None = None

    def observe(self, item: StoredInstance) -> StoredInstance:
        record = item.record
        self.instances += 1
        self.history_events += len(item.history)
        self.by_status[record.status.name] = self.by_status.get(record.status.name, 0) + 1
        for f in FILTERS:
            if f.matches(self.spec, record):
                self.counts[f.label] += 1
        if record.status is Status.COMPLETED:
            if self.completed % self.purge_size == 0:
                self._window_start = record.created_at
            self.completed += 1
            if self.completed % self.purge_size == 0 and self._window_start is not None:
                self.purge_windows.append((self._window_start, record.created_at))
        return item


@dataclass
class Timing:
    samples_ms: list[float]

    def summary(self) -> dict[str, float]:
        return {
            "median_ms": statistics.median(self.samples_ms),
            "min_ms": min(self.samples_ms),
            "max_ms": max(self.samples_ms),
            "first_ms": self.samples_ms[0],
        }


async def _timed_page(client: DurableTaskClient, query: OrchestrationQuery) -> tuple[float, int]:
    began = time.perf_counter()
    result = await client.get_all_instances(query)
    return (time.perf_counter() - began) * 1000.0, len(result.instances)


async def _token_at(client: DurableTaskClient, base: dict[str, Any], skip: int) -> tuple[str | None, int]:
    """A continuation token about `skip` matches deep (whole walking pages), and its exact depth."""
    step = SKIP_PAGE_SIZE if skip >= SKIP_PAGE_SIZE else PAGE_SIZE
    token, seen = None, 0
    while seen + step <= skip:
        result = await client.get_all_instances(
            OrchestrationQuery(**base, page_size=step, continuation_token=token)
        )
        token, seen = result.continuation_token, seen + len(result.instances)
        if token is None:
            break
    return token, seen


async def measure_pages(client: DurableTaskClient, tally: Tally, repeats: int) -> list[dict[str, Any]]:
    """For each filter: the first page and a page halfway through the matches, `repeats` times each."""
    results = []
    for f in FILTERS:
        base = f.query(tally.spec)
        expected = tally.counts[f.label]
        entry: dict[str, Any] = {"filter": f.label, "matches": expected}
        first = OrchestrationQuery(**base, page_size=PAGE_SIZE)
        samples, sizes = [], set()
        for _ in range(repeats):
            ms, size = await _timed_page(client, first)
            samples.append(ms)
            sizes.add(size)
        if sizes != {min(PAGE_SIZE, expected)}:
            raise AssertionError(
                f"{f.label}: first page held {sizes} instances, expected {min(PAGE_SIZE, expected)}"
            )
        entry["first_page"] = Timing(samples).summary()
        token, depth = await _token_at(client, base, expected // 2)
        if token is not None:
            deep = OrchestrationQuery(**base, page_size=PAGE_SIZE, continuation_token=token)
            samples = []
            for _ in range(repeats):
                ms, size = await _timed_page(client, deep)
                samples.append(ms)
                if size != PAGE_SIZE:
                    raise AssertionError(f"{f.label}: deep page held {size} instances")
            entry["deep_page"] = {**Timing(samples).summary(), "depth": depth}
        results.append(entry)
    return results


async def measure_purges(client: DurableTaskClient, tally: Tally, repeats: int) -> list[dict[str, Any]]:
    """Purge `repeats` successive windows of `purge_size` completed instances, one call each."""
    results = []
    for created_from, created_to in tally.purge_windows[:repeats]:
        purge = PurgeInstancesFilter(
            created_from=created_from, created_to=created_to, runtime_status=[Status.COMPLETED]
        )
        began = time.perf_counter()
        result = await client.purge_all_instances(purge)
        elapsed = time.perf_counter() - began
        if result.purged_instance_count != tally.purge_size:
            raise AssertionError(f"purged {result.purged_instance_count}, expected {tally.purge_size}")
        left = await client.get_all_instances(
            OrchestrationQuery(
                created_from=created_from, created_to=created_to, runtime_status=[Status.COMPLETED]
            )
        )
        if left.instances:
            raise AssertionError("completed instances left in a purged window")
        results.append({"purged": result.purged_instance_count, "seconds": elapsed})
    return results
