"""Medians, ratios and the table: ours/best with the right sense of "best" for each metric."""

from __future__ import annotations

from typing import Any

from bench.report import HEADLINE_METRICS, medians, ratios, render_table


def _run(system: str, workload: str, status: str = "ok", **metrics: float) -> dict[str, Any]:
    return {"system": system, "workload": workload, "status": status, "metrics": metrics}


def test_medians_ignore_failed_runs() -> None:
    runs = [
        _run("dbos", "chain3", throughput_per_s=10.0),
        _run("dbos", "chain3", throughput_per_s=30.0),
        _run("dbos", "chain3", throughput_per_s=20.0),
        {"system": "dbos", "workload": "chain3", "status": "timeout"},
    ]
    assert medians(runs) == {"dbos": {"chain3": {"throughput_per_s": 20.0}}}


def test_ratio_uses_fastest_peer_for_throughput_and_lowest_for_latency() -> None:
    summary = medians(
        [
            _run("duratask", "chain3", throughput_per_s=300.0),
            _run("dbos", "chain3", throughput_per_s=30.0),
            _run("durabletask", "chain3", throughput_per_s=60.0),
            _run("duratask", "latency", p50_ms=5.0, p90_ms=9.0),
            _run("dbos", "latency", p50_ms=20.0, p90_ms=30.0),
            _run("durabletask", "latency", p50_ms=10.0, p90_ms=12.0),
        ]
    )
    result = ratios(summary)
    assert result["chain3.throughput_per_s"] == 5.0
    assert result["latency.p50_ms"] == 0.5
    assert result["latency.p90_ms"] == 0.75
    assert result["fanout.elapsed_s"] is None


def test_ratio_is_none_without_ours() -> None:
    summary = medians([_run("dbos", "fanout", elapsed_s=3.0)])
    assert ratios(summary)["fanout.elapsed_s"] is None


def test_table_shows_notes_for_empty_cells_and_only_requested_workloads() -> None:
    summary = medians([_run("dbos", "fanout", elapsed_s=3.0), _run("durabletask", "fanout", elapsed_s=1.5)])
    params = {"n": 2000, "latency_n": 200, "fanout_n": 1000, "memory_n": 10_000}
    table = render_table(
        summary,
        ["duratask", "dbos", "durabletask"],
        ["fanout"],
        {("duratask", "fanout"): "not available"},
        params,
    )
    lines = table.splitlines()
    fanout_row = next(line for line in lines if line.startswith("fan-out/fan-in of 1000"))
    assert "not available" in fanout_row
    assert fanout_row.split()[-1] == "durabletask"
    assert not any("throughput" in line for line in lines)
    assert len([spec for spec in HEADLINE_METRICS if spec.workload == "fanout"]) == 1
