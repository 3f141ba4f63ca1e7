"""Run the side-by-side benchmark: every (repeat, workload, system) in a fresh subprocess.

    python -m bench --systems duratask,dbos,durabletask --workloads chain3,latency,fanout,memory \\
        --repeat 3 --n 2000

Repeats are interleaved (repeat 1 of every system, then repeat 2, ...) so that drift of the machine
hits every system alike. A system that is not available is skipped from then on; a run that fails or
times out is reported and the remaining repeats of that (system, workload) are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.child import EXIT_UNAVAILABLE
from bench.driver import Params
from bench.report import medians, ratios, render_table
from bench.systems import ALL_WORKLOADS, SYSTEMS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO_ROOT / "bench" / "results"
LOG_TAIL_LINES = 15


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def names(choices: tuple[str, ...] | list[str]) -> Any:
        def parse(text: str) -> list[str]:
            chosen = [name.strip() for name in text.split(",") if name.strip()]
            unknown = sorted(set(chosen) - set(choices))
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"unknown: {', '.join(unknown)} (choose from {', '.join(choices)})"
                )
            return chosen

        return parse

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", type=names(list(SYSTEMS)), default=list(SYSTEMS))
    parser.add_argument("--workloads", type=names(ALL_WORKLOADS), default=list(ALL_WORKLOADS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000, help="chain3 instances started at once")
    parser.add_argument("--latency-n", type=int, default=200, help="sequential instances measured")
    parser.add_argument("--latency-warmup", type=int, default=20)
    parser.add_argument("--fanout-n", type=int, default=1000, help="activities in the fan-out")
    parser.add_argument("--memory-n", type=int, default=10_000, help="instances waiting on an event")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for one run")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    return parser.parse_args(argv)


@dataclass
class Plan:
    """What is still worth running: systems found unavailable and failed (system, workload) drop out."""

    unavailable: dict[str, str] = field(default_factory=dict)
    failed: dict[tuple[str, str], str] = field(default_factory=dict)

    def skip(self, system: str, workload: str) -> bool:
        return system in self.unavailable or (system, workload) in self.failed

    def notes(self) -> dict[tuple[str, str], str]:
        notes = {key: reason.split(":")[0] for key, reason in self.failed.items()}
        for system in self.unavailable:
            notes.update({(system, workload): "not available" for workload in ALL_WORKLOADS})
        return notes


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(
    system: str, workload: str, params: Params, timeout: float, log_path: Path, out_path: Path
) -> dict[str, Any]:
    """One run in a fresh process (its own session, so a timeout kills its sidecar too)."""
    command = [
        sys.executable,
        "-m",
        "bench.child",
        system,
        workload,
        json.dumps(params.to_json()),
        str(out_path),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    began = time.perf_counter()
    cpu_before = _children_cpu_s()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return {"status": "timeout", "reason": f"timeout: killed after {timeout:.0f} s"}
    if out_path.exists():
        result: dict[str, Any] = json.loads(out_path.read_text())
        # CPU of the run's whole process tree (sidecar included once waited for), start-up and
        # warm-up included: less sensitive than wall time to other load on the machine.
        result["cpu_s"] = _children_cpu_s() - cpu_before
        return result
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
    status = "unavailable" if code == EXIT_UNAVAILABLE else "error"
    return {
        "status": status,
        "reason": f"crashed: exit code {code} after {time.perf_counter() - began:.1f} s",
        "log_tail": tail,
    }


def describe(result: dict[str, Any]) -> str:
    metrics = result.get("metrics", {})
    formats = {
        "chain3": lambda: f"{metrics['throughput_per_s']:.1f} inst/s ({metrics['elapsed_s']:.1f} s)",
        "latency": lambda: f"p50 {metrics['p50_ms']:.1f} ms, p90 {metrics['p90_ms']:.1f} ms",
        "fanout": lambda: f"{metrics['elapsed_s']:.2f} s",
        "memory": lambda: f"RSS {metrics['rss_before_mb']:.0f} -> {metrics['rss_after_mb']:.0f} MB",
    }
    if result["status"] == "ok":
        return f"{formats[result['workload']]()}, {result['cpu_s']:.1f} s CPU"
    return f"{result['status'].upper()}: {result.get('reason', '')}"


def environment() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "git_commit": commit or None,
        "packages": {name: version(name) for name in ("duratask", "dbos", "durabletask", "grpcio")},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = args.results_dir / "runs" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    params = Params(
        workdir=Path("."),  # each child replaces it with its own temporary directory
        n=args.n,
        latency_n=args.latency_n,
        latency_warmup=args.latency_warmup,
        fanout_n=args.fanout_n,
        memory_n=args.memory_n,
        timeout=args.timeout,
    )
    plan = Plan()
    runs: list[dict[str, Any]] = []
    started_at = datetime.now(UTC).isoformat()
    for repeat in range(1, args.repeat + 1):
        for workload in args.workloads:
            for system in args.systems:
                if workload not in SYSTEMS[system].workloads or plan.skip(system, workload):
                    continue
                name = f"{system}-{workload}-{repeat}"
                # Other work on the machine skews every figure: keep the evidence with the run.
                load_before = os.getloadavg()[0]
                result = run_child(
                    system, workload, params, args.timeout, run_dir / f"{name}.log", run_dir / f"{name}.json"
                )
                result.update(
                    system=system,
                    workload=workload,
                    repeat=repeat,
                    load_1min_before=load_before,
                    load_1min_after=os.getloadavg()[0],
                )
                runs.append(result)
                print(
                    f"[{repeat}/{args.repeat}] {system:<12} {workload:<8} {describe(result)}"
                    f"  (load {load_before:.1f} -> {result['load_1min_after']:.1f})",
                    flush=True,
                )
                if result["status"] == "unavailable":
                    plan.unavailable[system] = result.get("reason", "")
                elif result["status"] != "ok":
                    plan.failed[(system, workload)] = f"{result['status']}: {result.get('reason', '')}"
                    print(f"    log: {run_dir / (name + '.log')}", flush=True)

    summary = medians(runs)
    notes = plan.notes()
    for system in args.systems:
        for workload in args.workloads:
            if workload not in SYSTEMS[system].workloads:
                notes[(system, workload)] = "not measured"
    table_params = {**params.to_json(), "workloads": args.workloads}
    print()
    busiest = max((run["load_1min_after"] for run in runs), default=0.0)
    if busiest > (os.cpu_count() or 1) * 0.75:
        print(f"warning: the machine was busy (1-min load up to {busiest:.1f} on {os.cpu_count()} CPUs)")
    print(render_table(summary, args.systems, args.workloads, notes, table_params))
    for system, reason in plan.unavailable.items():
        print(f"{system}: not available - {reason}")
    for (system, workload), reason in plan.failed.items():
        print(f"{system} {workload}: {reason}")

    report = {
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(),
        "params": {
            **params.to_json(),
            "repeat": args.repeat,
            "systems": args.systems,
            "workloads": args.workloads,
        },
        "systems": {name: SYSTEMS[name].description for name in args.systems},
        "environment": environment(),
        "medians": summary,
        "ratios_duratask_to_best_peer": ratios(summary),
        "unavailable": plan.unavailable,
        "failures": {f"{system}/{workload}": reason for (system, workload), reason in plan.failed.items()},
        "runs": runs,
    }
    report["params"].pop("workdir")
    out_path = args.results_dir / f"bench-{stamp}.json"
    out_path.write_text(json.dumps(report, indent=2))
    print(f"\nresults: {out_path}\nlogs:    {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
