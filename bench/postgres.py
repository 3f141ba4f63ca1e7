"""The PostgreSQL benchmark: duratask with 1, 2 and 4 worker processes, and DBOS, on one server.

    python -m bench.postgres                      # durable server (fsync=on), chain3 + latency, 3 repeats
    python -m bench.postgres --fsync off          # the same on a server that does not sync (labelled)
    python -m bench.postgres --repeat 5 --n 2000 --latency-n 200

Starts one throw-away PostgreSQL server (bench/pg.py), points every run at it through the
environment (each run still gets a fresh database, and a fresh process, as in `python -m bench`),
runs the usual harness (bench/run.py) over the PostgreSQL systems, then prints the figures that
issue 4 sets targets for: chain3 throughput of duratask with one worker process against DBOS's,
and the throughput gained from one to two (and four) worker processes. Any other option of
`python -m bench` passes through. The report is the harness's JSON, with a `postgres` section
added (server settings, ratios, targets).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench import pg, run

DEFAULT_SYSTEMS = "pg-duratask-1w,pg-duratask-2w,pg-duratask-4w,pg-duratask-inproc,pg-dbos"
DEFAULT_RESULTS_DIR = run.DEFAULT_RESULTS_DIR / "postgres"

#: (label, numerator system, denominator system, target): chain3 throughput ratios.
TARGETS = (
    ("duratask 1 worker process / DBOS", "pg-duratask-1w", "pg-dbos", 5.0),
    ("duratask 2 / 1 worker processes", "pg-duratask-2w", "pg-duratask-1w", 1.5),
    ("duratask 4 / 1 worker processes", "pg-duratask-4w", "pg-duratask-1w", None),
    ("duratask worker in the benchmark process / DBOS", "pg-duratask-inproc", "pg-dbos", None),
)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m bench.postgres", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsync", choices=("on", "off"), default="on", help="server durability (default on)")
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS)
    parser.add_argument("--workloads", default="chain3,latency")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    return parser.parse_known_args(argv)


def throughput_ratios(medians: dict[str, Any]) -> list[dict[str, Any]]:
    def throughput(system: str) -> float | None:
        value = medians.get(system, {}).get("chain3", {}).get("throughput_per_s")
        return None if value is None else float(value)

    ratios = []
    for label, top, bottom, target in TARGETS:
        a, b = throughput(top), throughput(bottom)
        ratio = None if a is None or not b else a / b
        ratios.append(
            {
                "label": label,
                "ratio": ratio,
                "target": target,
                "met": None if ratio is None or target is None else ratio >= target,
            }
        )
    return ratios


def render_summary(medians: dict[str, Any], systems: list[str], runs: list[dict[str, Any]]) -> str:
    columns = (
        ("chain3", "throughput_per_s", "chain3 inst/s", "{:.1f}"),
        ("chain3", "start_all_s", "start all (s)", "{:.1f}"),
        ("chain3", "server_cpu_ms_per_instance", "server CPU ms/inst", "{:.1f}"),
        ("chain3", "worker_cpu_ms_per_instance", "workers CPU ms/inst", "{:.1f}"),
        ("chain3", "client_cpu_ms_per_instance", "bench proc CPU ms/inst", "{:.1f}"),
        ("latency", "p50_ms", "latency p50 (ms)", "{:.1f}"),
        ("latency", "p90_ms", "latency p90 (ms)", "{:.1f}"),
    )
    header = ["system", *(label for _, _, label, _ in columns)]
    rows = [header]
    for system in systems:
        cells = [system]
        for workload, key, _, fmt in columns:
            value = medians.get(system, {}).get(workload, {}).get(key)
            cells.append("-" if value is None else fmt.format(value))
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    loads = [run[key] for run in runs for key in ("load_1min_before", "load_1min_after")]
    if loads:
        lines.append(
            f"1-min load during the runs: {min(loads):.1f} .. {max(loads):.1f} on {os.cpu_count()} CPUs"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    before = set(args.results_dir.glob("bench-*.json"))
    with pg.running_server(fsync=args.fsync == "on") as server:
        os.environ.update(server.environment())  # inherited by every run's process
        settings = pg.server_settings(server.url())
        label = "durable (fsync=on)" if settings["fsync"] == "on" else "NOT durable (fsync=off)"
        print(f"PostgreSQL {settings['server_version']}, {label}: {json.dumps(settings)}", flush=True)
        harness_args = ["--systems", args.systems, "--workloads", args.workloads,
                        "--results-dir", str(args.results_dir), *rest]  # fmt: skip
        code = run.main(harness_args)
    if code != 0:
        return code
    [report_path] = set(args.results_dir.glob("bench-*.json")) - before
    report = json.loads(report_path.read_text())
    ratios = throughput_ratios(report["medians"])
    report["postgres"] = {"server_settings": settings, "durable": settings["fsync"] == "on", "ratios": ratios}
    report_path.write_text(json.dumps(report, indent=2))

    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    print(f"\nPostgreSQL, {label}: medians of {report['params']['repeat']} runs")
    print(render_summary(report["medians"], systems, report["runs"]))
    for ratio in ratios:
        value = "-" if ratio["ratio"] is None else f"{ratio['ratio']:.2f}x"
        verdict = "" if ratio["target"] is None else f" (target >= {ratio['target']}x: "
        verdict += "" if ratio["target"] is None else ("met)" if ratio["met"] else "NOT met)")
        print(f"chain3 throughput, {ratio['label']}: {value}{verdict}")
    print(f"\nresults: {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
