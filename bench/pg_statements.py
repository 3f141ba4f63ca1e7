"""Where PostgreSQL spends its time during chain3: the top statements by total execution time.

    python -m bench.pg_statements --workers 1 --n 2000
    python -m bench.pg_statements --workers 2 --n 2000 --fsync off

A diagnostic, not a benchmark: the server runs with `pg_stat_statements` (which costs a little),
the duratask client runs here and the worker in `--workers` processes (as the pg-duratask-Nw
systems), and after one warm-up instance the statistics are reset, `--n` instances are started
at once and awaited, and the statements that took the most server time are listed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import psycopg

from bench import pg
from bench.systems.postgres_duratask import worker_processes
from duratask import DurableTaskClient
from tests.pgcluster import create_database

TOP_STATEMENTS = """
SELECT calls, total_exec_time, mean_exec_time, rows, regexp_replace(query, '\\s+', ' ', 'g')
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC LIMIT %(limit)s
"""


async def run(url: str, workers: int, n: int, server_pid: int, setup_sql: list[str]) -> None:
    async with DurableTaskClient(url) as client:
        await client.get_instance("schema")  # the schema exists from here on
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in setup_sql:
                conn.execute(statement)  # type: ignore[call-overload]
        async with worker_processes(url, workers):
            await _measure(client, url, n, server_pid, workers)


async def _measure(client: DurableTaskClient, url: str, n: int, server_pid: int, workers: int) -> None:
    warm = await client.schedule_new_orchestration_instance("hello_cities")
    await client.wait_for_instance_completion(warm, timeout=60)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
    cpu_before, began = pg.server_cpu_s(server_pid), time.perf_counter()
    ids = await asyncio.gather(
        *(client.schedule_new_orchestration_instance("hello_cities") for _ in range(n))
    )
    started = time.perf_counter() - began
    for instance_id in ids:
        await client.wait_for_instance_completion(instance_id, timeout=600)
    elapsed = time.perf_counter() - began
    server_ms = (pg.server_cpu_s(server_pid) - cpu_before) * 1000 / n
    print(
        f"{n} instances, {workers} worker process(es): {n / elapsed:.1f} inst/s (all started after "
        f"{started:.1f} s), server CPU {server_ms:.2f} ms per instance"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pg_statements", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--fsync", choices=("on", "off"), default="on")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--setup-sql",
        action="append",
        default=[],
        help="SQL to run once the schema exists (e.g. to try a setting)",
    )
    parser.add_argument(
        "--explain-slower-than",
        type=float,
        metavar="MS",
        help="also log (auto_explain, with ANALYZE) the plans of statements slower than MS and print "
        "the slowest few: where a statement's time goes under the real load",
    )
    args = parser.parse_args(argv)
    settings = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}
    if args.explain_slower_than is not None:
        settings |= {
            "shared_preload_libraries": "pg_stat_statements,auto_explain",
            "auto_explain.log_min_duration": f"{args.explain_slower_than}ms",
            "auto_explain.log_analyze": "on",
            "auto_explain.log_buffers": "on",
            "auto_explain.log_timing": "on",
        }
    with pg.running_server(fsync=args.fsync == "on", extra_settings=settings) as server:
        url = create_database(server.url(), "statements")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        asyncio.run(run(url, args.workers, args.n, server.postmaster_pid(), args.setup_sql))
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(TOP_STATEMENTS, {"limit": args.top}).fetchall()
        plans = slowest_plans(server.log_file.read_text(errors="replace")) if args.explain_slower_than else []
    for duration, plan in plans[:3]:
        print(f"--- plan of a statement that took {duration:.1f} ms ---\n{plan}\n")
    print(f"{'calls':>7} {'total ms':>9} {'mean ms':>8} {'rows':>7}  statement")
    for calls, total, mean, count, query in rows:
        print(f"{calls:>7} {total:>9.0f} {mean:>8.2f} {count:>7}  {query[:100]}")
    return 0


def slowest_plans(log: str) -> list[tuple[float, str]]:
    """auto_explain's entries in a server log (``duration: X ms  plan:`` and the plan's lines), slowest first."""
    plans: list[tuple[float, str]] = []
    current: list[str] | None = None
    duration = 0.0
    for line in log.splitlines():
        if "duration:" in line and "plan:" in line:
            if current is not None:
                plans.append((duration, "\n".join(current)))
            duration = float(line.split("duration:")[1].split("ms")[0])
            current = []
        elif current is not None and (line.startswith(("\t", " ")) or not line.strip()):
            current.append(line)
        elif current is not None:
            plans.append((duration, "\n".join(current)))
            current = None
    if current is not None:
        plans.append((duration, "\n".join(current)))
    return sorted(plans, key=lambda p: -p[0])


if __name__ == "__main__":
    sys.exit(main())
