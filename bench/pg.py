"""A throw-away PostgreSQL server for the benchmarks, with durable settings unless told otherwise.

The server is the tests' launcher (tests/pgcluster.py): a local PostgreSQL installation (Debian's
`postgresql-15` puts its binaries in /usr/lib/postgresql/15/bin; `BENCH_PG_BIN` names another
directory), a temporary directory, a free port of 127.0.0.1, local connections trusted; as root,
the server runs as the `postgres` user (else `nobody`), since PostgreSQL refuses to run as root.

Durability: `fsync=on`, `synchronous_commit=on` and `full_page_writes=on` (PostgreSQL's defaults)
unless `fsync=False`, which turns the first two off and is labelled as such in every report: a
commit then survives a crash of the server but not of the machine. `initdb` runs with `--no-sync`
either way (it only saves set-up time; the benchmark's own writes are synced).

Processes that take part in one benchmark share a server through the environment:
`BENCH_POSTGRES_URL` (the maintenance database of the server) and `BENCH_POSTGRES_PID` (its
postmaster, for CPU accounting). `fresh_database()` creates a new database on that server, or,
without the variables, starts a server of its own for the caller.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

# The throw-away server launcher the tests use too.
from tests.pgcluster import PostgresCluster, create_database, find_bin_dir

SUPERUSER = "bench"
BIN_VARIABLE = "BENCH_PG_BIN"
URL_VARIABLE = "BENCH_POSTGRES_URL"
PID_VARIABLE = "BENCH_POSTGRES_PID"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: Settings for every benchmark server. The connection limit covers 4 worker processes, the client,
#: their listeners and DBOS's pools; shared_buffers and max_wal_size are the usual first tuning of
#: a server (PostgreSQL's defaults, 128MB and 1GB, are sized for tiny machines).
BASE_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "300",
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
}
DURABLE_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
#: Not durable against an OS crash or power cut: labelled "fsync=off" wherever it is used.
UNSAFE_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
REPORTED_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "max_wal_size",
    "max_connections",
)


class PostgresServer(PostgresCluster):
    """The benchmarks' cluster (tests/pgcluster.py), durable unless `fsync=False`; `start()` it,
    `destroy()` it."""

    def __init__(self, *, fsync: bool = True, extra_settings: dict[str, str] | None = None) -> None:
        self.fsync = fsync
        settings = {
            **BASE_SETTINGS,
            **(DURABLE_SETTINGS if fsync else UNSAFE_SETTINGS),
            **(extra_settings or {}),
        }
        super().__init__(
            superuser=SUPERUSER, settings=settings, bin_dir=find_bin_dir(BIN_VARIABLE), prefix="bench-pg-"
        )

    def environment(self) -> dict[str, str]:
        """What child processes need to use this server (see `fresh_database`)."""
        return {URL_VARIABLE: self.url(), PID_VARIABLE: str(self.postmaster_pid())}


@contextlib.contextmanager
def running_server(
    *, fsync: bool = True, extra_settings: dict[str, str] | None = None
) -> Iterator[PostgresServer]:
    server = PostgresServer(fsync=fsync, extra_settings=extra_settings)  # initdb; cleans up if it fails
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def drop_database(maintenance_url: str, name: str) -> None:
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_settings(url: str) -> dict[str, str]:
    """The settings that matter for the figures, as the server reports them."""
    with psycopg.connect(url, autocommit=True) as conn:
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in REPORTED_SETTINGS}  # type: ignore[index]


@dataclass(frozen=True)
class Database:
    """A fresh database for one run, and the postmaster's pid (None if unknown) for CPU figures."""

    url: str
    server_pid: int | None
    settings: dict[str, str]


@contextlib.contextmanager
def fresh_database(prefix: str = "bench") -> Iterator[Database]:
    """A new, empty database on the shared server (`BENCH_POSTGRES_URL`), dropped afterwards; with no
    shared server, on a durable server of its own for the duration."""
    shared_url = os.environ.get(URL_VARIABLE)
    with contextlib.ExitStack() as stack:
        if shared_url:
            maintenance_url = shared_url
            pid_text = os.environ.get(PID_VARIABLE)
            pid = int(pid_text) if pid_text else None
        else:
            server = stack.enter_context(running_server())
            maintenance_url, pid = server.url(), server.postmaster_pid()
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        url = create_database(maintenance_url, name)
        stack.callback(drop_database, maintenance_url, name)
        yield Database(url, pid, server_settings(url))


def server_cpu_s(postmaster_pid: int) -> float:
    """CPU seconds of the whole server: the postmaster, its ended children (reaped, so counted in its
    cutime/cstime) and its live children (backends, walwriter, checkpointer...). Linux only."""
    total = _cpu_fields(postmaster_pid, with_children=True)
    for child in _children(postmaster_pid):
        with contextlib.suppress(OSError, ValueError):
            total += _cpu_fields(child, with_children=False)
    return total


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads). Linux only."""
    return _cpu_fields(pid, with_children=False)


def _cpu_fields(pid: int, *, with_children: bool) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from the 3rd on: utime is [11]
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLOCK_TICKS


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


@dataclass
class CpuMeter:
    """CPU per instance started, from construction on: of this process ("client"), of the worker
    processes (when there are any) and of the PostgreSQL server (postmaster and backends)."""

    worker_pids: list[int]
    server_pid: int | None
    instances: int = 0
    _start: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        now = {"client": time.process_time()}
        if self.worker_pids:
            now["worker"] = sum(process_cpu_s(pid) for pid in self.worker_pids)
        if self.server_pid is not None:
            now["server"] = server_cpu_s(self.server_pid)
        return now

    def count_instance(self) -> None:
        self.instances += 1

    def metrics(self) -> dict[str, float]:
        now, per = self._now(), max(self.instances, 1)
        return {f"{part}_cpu_ms_per_instance": (now[part] - self._start[part]) * 1000.0 / per for part in now}
