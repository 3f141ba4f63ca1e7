"""The four workloads, written once against `Driver`; each returns a dict of metrics."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.driver import EXPECTED_CHAIN, Driver, Params, WorkloadError, expected_fanout_sum

Metrics = dict[str, float]


async def _run_one_chain(driver: Driver) -> None:
    output = await driver.result(await driver.start_chain())
    if output != EXPECTED_CHAIN:
        raise WorkloadError(f"chain3 returned {output!r}, expected {EXPECTED_CHAIN!r}")


async def _warm_up(driver: Driver, count: int = 1) -> None:
    # Connections, imports and caches are set up outside the measured window, for every system alike.
    for _ in range(count):
        await _run_one_chain(driver)


async def chain3_throughput(driver: Driver, params: Params) -> Metrics:
    """Start n instances at once (concurrent starts), then await every result in order."""
    await _warm_up(driver)
    began = time.perf_counter()
    handles = await asyncio.gather(*(driver.start_chain() for _ in range(params.n)))
    all_started = time.perf_counter()
    for handle in handles:
        output = await driver.result(handle)
        if output != EXPECTED_CHAIN:
            raise WorkloadError(f"chain3 returned {output!r}")
    elapsed = time.perf_counter() - began
    return {
        "instances": params.n,
        "throughput_per_s": params.n / elapsed,
        "elapsed_s": elapsed,
        "start_all_s": all_started - began,
    }


async def chain3_latency(driver: Driver, params: Params) -> Metrics:
    """One instance at a time: start-to-completion of each, after a warm-up."""
    await _warm_up(driver, params.latency_warmup)
    samples_ms: list[float] = []
    for _ in range(params.latency_n):
        began = time.perf_counter()
        await _run_one_chain(driver)
        samples_ms.append((time.perf_counter() - began) * 1000.0)
    deciles = statistics.quantiles(samples_ms, n=10, method="inclusive")
    return {
        "samples": len(samples_ms),
        "p50_ms": statistics.median(samples_ms),
        "p90_ms": deciles[8],
        "mean_ms": statistics.fmean(samples_ms),
        "max_ms": max(samples_ms),
    }


async def fanout(driver: Driver, params: Params) -> Metrics:
    """One instance that fans out to fanout_n activities (when_all) and sums them."""
    await _warm_up(driver)
    began = time.perf_counter()
    total = await driver.result(await driver.start_fanout(params.fanout_n))
    elapsed = time.perf_counter() - began
    if total != expected_fanout_sum(params.fanout_n):
        raise WorkloadError(f"fan-out sum {total!r}, expected {expected_fanout_sum(params.fanout_n)}")
    return {"activities": params.fanout_n, "elapsed_s": elapsed}


def current_rss_mb() -> float:
    """Resident set size of this process (worker and client live here in embedded mode)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise WorkloadError("VmRSS not found in /proc/self/status (Linux only)")


async def memory(driver: Driver, params: Params) -> Metrics:
    """RSS growth with memory_n instances all waiting on an external event."""
    await _warm_up(driver)
    gc.collect()
    before = current_rss_mb()
    began = time.perf_counter()
    handles = await asyncio.gather(*(driver.start_waiter() for _ in range(params.memory_n)))
    for handle in handles:
        await driver.wait_started(handle)
    settle_s = time.perf_counter() - began
    # Let the last episodes finish their bookkeeping before reading the figure.
    await asyncio.sleep(1.0)
    gc.collect()
    after = current_rss_mb()
    return {
        "instances": params.memory_n,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "rss_delta_mb": after - before,
        "kb_per_instance": (after - before) * 1024.0 / params.memory_n,
        "all_waiting_s": settle_s,
    }


WORKLOADS: dict[str, Callable[[Driver, Params], Awaitable[Metrics]]] = {
    "chain3": chain3_throughput,
    "latency": chain3_latency,
    "fanout": fanout,
    "memory": memory,
}
