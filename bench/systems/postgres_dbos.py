"""DBOS 3.4 on PostgreSQL: its system database in a fresh database of the benchmark's server.

The same workflows, steps and idioms as the dbos system (bench/systems/dbos_system.py: sync
workflows and steps for chain3 and latency), with DBOS's defaults otherwise (pool sizes,
LISTEN/NOTIFY). DBOS runs its workflows in the process that starts them (its normal mode), so
the driver reports the CPU of this process and of the PostgreSQL server per instance started.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dbos import DBOS, DBOSConfig

from bench.driver import Params, SystemUnavailable
from bench.pg import Database, PostgresUnavailable, fresh_database, server_cpu_s
from bench.systems.dbos_system import DbosDriver


class PostgresDbosDriver(DbosDriver):
    def __init__(self, timeout: float, database: Database) -> None:
        super().__init__(timeout)
        self._server_pid = database.server_pid
        self._fsync = database.settings.get("fsync") == "on"
        self._instances = 0
        self._start = self._cpu_now()

    def _cpu_now(self) -> dict[str, float]:
        now = {"client": time.process_time()}
        if self._server_pid is not None:
            now["server"] = server_cpu_s(self._server_pid)
        return now

    async def start_chain(self) -> object:
        self._instances += 1
        return await super().start_chain()

    async def start_fanout(self, n: int) -> object:
        self._instances += 1
        return await super().start_fanout(n)

    def extra_metrics(self) -> dict[str, float]:
        now, per = self._cpu_now(), max(self._instances, 1)
        # "client" is this whole process: DBOS runs the workflows and steps here too.
        metrics = {
            f"{part}_cpu_ms_per_instance": (now[part] - self._start[part]) * 1000.0 / per for part in now
        }
        return {**metrics, "pg_fsync_on": float(self._fsync)}


@asynccontextmanager
async def open_driver(params: Params) -> AsyncIterator[PostgresDbosDriver]:
    try:
        with fresh_database("dbos") as database:
            config: DBOSConfig = {
                "name": "bench",
                "system_database_url": database.url,
                "log_level": "WARNING",
            }
            DBOS(config=config)
            DBOS.launch()
            try:
                yield PostgresDbosDriver(params.timeout, database)
            finally:
                DBOS.destroy()
    except PostgresUnavailable as exc:
        raise SystemUnavailable(str(exc)) from exc
