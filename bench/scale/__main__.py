"""Listing and purging with a million instances stored, through the public client.

    python -m bench.scale --storage sqlite
    python -m bench.scale --storage postgresql                 # on a throw-away durable server
    python -m bench.scale --storage postgresql --url postgresql://user@host:5432/postgres
    python -m bench.scale --storage sqlite --instances 100000 --purge 10000   # quicker

Loads the dataset (bench/scale/dataset.py) straight into the storage's tables (set-up, not
measured), then measures with `DurableTaskClient` only: `get_all_instances` pages of 100 under
several filters, the first page and one halfway through the matches (by continuation token),
each `--repeats` times (median reported); then `purge_all_instances` of `--purge` completed
instances by filter (created range + status), `--purge-repeats` successive windows.
Targets (issue 4): every page under 50 ms (median), each purge under 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import pg
from bench.run import DEFAULT_RESULTS_DIR
from bench.scale.dataset import Spec, instances
from bench.scale.load import load_postgres, load_sqlite
from bench.scale.measure import PAGE_SIZE, Tally, measure_pages, measure_purges
from duratask import DurableTaskClient
from tests.pgcluster import create_database

TASKHUB = "default"
PAGE_TARGET_MS = 50.0
PURGE_TARGET_S = 30.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", choices=("sqlite", "postgresql"), required=True)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--purge", type=int, default=100_000, help="completed instances per purge")
    parser.add_argument("--purge-repeats", type=int, default=3, help="successive purge windows")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per page measured")
    parser.add_argument(
        "--fsync", choices=("on", "off"), default="on", help="own PostgreSQL server's durability"
    )
    parser.add_argument("--url", help="an existing PostgreSQL server (any database; a new one is created)")
    parser.add_argument("--workdir", type=Path, help="where the SQLite file goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file (its path is printed)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR / "scale")
    return parser.parse_args(argv)


@contextlib.contextmanager
def sqlite_target(workdir: Path | None, keep: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    directory = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=workdir))
    try:
        yield (
            f"sqlite:///{directory / 'scale.db'}",
            {"sqlite_version": sqlite3.sqlite_version, "durable": True},
        )
    finally:
        if keep:
            print(f"kept: {directory / 'scale.db'}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def postgres_target(url: str | None, fsync: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    with contextlib.ExitStack() as stack:
        if url is None:
            url = stack.enter_context(pg.running_server(fsync=fsync)).url()
        name = f"scale_{os.getpid()}"
        database_url = create_database(url, name)
        stack.callback(pg.drop_database, url, name)
        yield database_url, pg.server_settings(database_url)


def stored_size_mb(connection_string: str) -> float:
    if connection_string.startswith("sqlite:///"):
        path = Path(connection_string.removeprefix("sqlite:///"))
        files = [path, path.with_name(path.name + "-wal")]
        return sum(file.stat().st_size for file in files if file.exists()) / 1e6
    import psycopg

    with psycopg.connect(connection_string, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return float(row[0]) / 1e6 if row else 0.0


async def create_schema(connection_string: str) -> None:
    async with DurableTaskClient(connection_string) as client:
        await client.get_instance("schema-check")  # opening the storage migrates it


async def measure(connection_string: str, tally: Tally, args: argparse.Namespace) -> dict[str, Any]:
    async with DurableTaskClient(connection_string) as client:
        load_before = os.getloadavg()[0]
        pages = await measure_pages(client, tally, args.repeats)
        load_middle = os.getloadavg()[0]
        purges = await measure_purges(client, tally, args.purge_repeats)
        load_after = os.getloadavg()[0]
    return {"pages": pages, "purges": purges, "load_1min": [load_before, load_middle, load_after]}


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    page_medians = [
        entry[which]["median_ms"]
        for entry in results["pages"]
        for which in ("first_page", "deep_page")
        if which in entry
    ]
    purge_seconds = [purge["seconds"] for purge in results["purges"]]
    return {
        "slowest_page_median_ms": max(page_medians),
        "pages_under_50ms": max(page_medians) < PAGE_TARGET_MS,
        "slowest_purge_s": max(purge_seconds) if purge_seconds else None,
        "purges_under_30s": bool(purge_seconds) and max(purge_seconds) < PURGE_TARGET_S,
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        (
            f"{report['storage']}: {report['tally']['instances']:,} instances, "
            f"{report['tally']['history_events']:,} history events, {report['stored_mb']:.0f} MB; "
            f"loaded in {report['load_s']:.0f} s (set-up)"
        ),
        f"page of {PAGE_SIZE}, median of {report['params']['repeats']} calls (ms):",
        f"  {'filter':<42} {'matches':>9} {'first page':>11} {'deep page':>10} {'at depth':>9}",
    ]
    for entry in report["results"]["pages"]:
        deep = entry.get("deep_page")
        lines.append(
            f"  {entry['filter']:<42} {entry['matches']:>9,} {entry['first_page']['median_ms']:>11.1f} "
            + (f"{deep['median_ms']:>10.1f} {deep['depth']:>9,}" if deep else f"{'-':>10} {'-':>9}")
        )
    for index, purge in enumerate(report["results"]["purges"], 1):
        lines.append(
            f"purge #{index}: {purge['purged']:,} completed instances (with history) in {purge['seconds']:.2f} s"
        )
    v = report["verdicts"]
    lines.append(
        f"targets: pages < {PAGE_TARGET_MS:.0f} ms: {'met' if v['pages_under_50ms'] else 'NOT met'} "
        f"(slowest median {v['slowest_page_median_ms']:.1f} ms); purge < {PURGE_TARGET_S:.0f} s: "
        f"{'met' if v['purges_under_30s'] else 'NOT met'} (slowest {v['slowest_purge_s'] or 0:.2f} s)"
    )
    loads = report["results"]["load_1min"]
    lines.append(f"1-min load: {' -> '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} CPUs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = Spec(instances=args.instances)
    tally = Tally(spec, args.purge)
    target = (
        sqlite_target(args.workdir, args.keep)
        if args.storage == "sqlite"
        else postgres_target(args.url, args.fsync == "on")
    )
    with target as (connection_string, settings):
        asyncio.run(create_schema(connection_string))
        print(f"loading {spec.instances:,} instances into {args.storage} ...", flush=True)
        began = time.perf_counter()
        items = (tally.observe(item) for item in instances(spec))
        if args.storage == "sqlite":
            load_sqlite(connection_string.removeprefix("sqlite:///"), TASKHUB, items)
        else:
            load_postgres(connection_string, TASKHUB, items)
        load_s = time.perf_counter() - began
        stored_mb = stored_size_mb(connection_string)
        if len(tally.purge_windows) < args.purge_repeats:
            print(f"warning: only {len(tally.purge_windows)} purge windows of {args.purge}", file=sys.stderr)
        results = asyncio.run(measure(connection_string, tally, args))
    report = {
        "storage": args.storage,
        "finished_at": datetime.now(UTC).isoformat(),
        "params": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        "settings": settings,
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        },
        "load_s": load_s,
        "stored_mb": stored_mb,
        "tally": {
            "instances": tally.instances,
            "history_events": tally.history_events,
            "by_status": tally.by_status,
            "matches": tally.counts,
        },
        "results": results,
    }
    report["verdicts"] = verdicts(results)
    print(render(report))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"scale-{args.storage}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
