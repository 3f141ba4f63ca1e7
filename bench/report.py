"""Turn raw runs into medians, duratask-to-best-peer ratios and a plain-text table."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

OURS = "duratask"

Better = Literal["higher", "lower"]
# system -> workload -> metric -> median value
Summary = dict[str, dict[str, dict[str, float]]]


@dataclass(frozen=True)
class MetricSpec:
    workload: str
    key: str
    label: str
    better: Better


HEADLINE_METRICS = (
    MetricSpec("chain3", "throughput_per_s", "chain3 throughput, {n} at once (inst/s)", "higher"),
    MetricSpec("latency", "p50_ms", "chain3 latency p50, {latency_n} sequential (ms)", "lower"),
    MetricSpec("latency", "p90_ms", "chain3 latency p90 (ms)", "lower"),
    MetricSpec("fanout", "elapsed_s", "fan-out/fan-in of {fanout_n} activities (s)", "lower"),
    MetricSpec("memory", "rss_delta_mb", "RSS growth, {memory_n} waiting instances (MB)", "lower"),
    MetricSpec("memory", "rss_after_mb", "RSS with {memory_n} waiting instances (MB)", "lower"),
)

# Ratios are always ours/best: for "higher" metrics best is the peers' maximum (>1 means we win),
# for "lower" metrics best is the peers' minimum (<1 means we win).
_BEST_OF: dict[Better, Any] = {"higher": max, "lower": min}


def medians(runs: list[dict[str, Any]]) -> Summary:
    """Median of every metric over the successful repeats of each (system, workload)."""
    samples: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for run in runs:
        if run.get("status") != "ok":
            continue
        for key, value in run["metrics"].items():
            samples[run["system"]][run["workload"]][key].append(float(value))
    return {
        system: {
            workload: {key: statistics.median(values) for key, values in metrics.items()}
            for workload, metrics in workloads.items()
        }
        for system, workloads in samples.items()
    }


def best_peer(summary: Summary, spec: MetricSpec) -> tuple[str, float] | None:
    peers = [
        (system, workloads[spec.workload][spec.key])
        for system, workloads in summary.items()
        if system != OURS and spec.key in workloads.get(spec.workload, {})
    ]
    if not peers:
        return None
    return _BEST_OF[spec.better](peers, key=lambda pair: pair[1])  # type: ignore[no-any-return]


def ratio_to_best_peer(summary: Summary, spec: MetricSpec) -> float | None:
    ours = summary.get(OURS, {}).get(spec.workload, {}).get(spec.key)
    best = best_peer(summary, spec)
    if ours is None or best is None or best[1] == 0:
        return None
    return ours / best[1]


def ratios(summary: Summary) -> dict[str, float | None]:
    return {f"{spec.workload}.{spec.key}": ratio_to_best_peer(summary, spec) for spec in HEADLINE_METRICS}


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def render_table(
    summary: Summary,
    systems: list[str],
    workloads: list[str],
    notes: dict[tuple[str, str], str],
    params: dict[str, Any],
) -> str:
    """One row per headline metric of the requested workloads, one column per system.

    `notes[(system, workload)]` says why a cell is empty ("not available", "timeout", ...).
    """
    header = ["metric", *systems, "duratask/best peer", "best peer"]
    rows: list[list[str]] = []
    for spec in HEADLINE_METRICS:
        if spec.workload not in workloads:
            continue
        cells = [spec.label.format(**params) + (" ^" if spec.better == "higher" else " v")]
        for system in systems:
            value = summary.get(system, {}).get(spec.workload, {}).get(spec.key)
            cells.append(_cell(value) if value is not None else notes.get((system, spec.workload), "-"))
        best = best_peer(summary, spec)
        cells.append(_cell(ratio_to_best_peer(summary, spec)))
        cells.append(best[0] if best else "-")
        rows.append(cells)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("^ higher is better, v lower is better; ratio = duratask / best peer (medians of repeats).")
    return "\n".join(lines)
