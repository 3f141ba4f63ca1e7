"""DBOS 3.4 on PostgreSQL: its system database in a fresh database of the benchmark's server.

The same workflows, steps and idioms as the dbos system (bench/systems/dbos_system.py: sync
workflows and steps for chain3 and latency), with DBOS's defaults otherwise (pool sizes,
LISTEN/NOTIFY). DBOS runs its workflows in the process that starts them (its normal mode), so
the driver reports the CPU of this process and of the PostgreSQL server per instance started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dbos import DBOS, DBOSConfig

from bench.driver import Metered, Params, SystemUnavailable
from bench.pg import CpuMeter, Database, fresh_database
from bench.systems.dbos_system import DbosDriver
from tests.pgcluster import PostgresUnavailable


class PostgresDbosDriver(Metered, DbosDriver):
    """DBOS runs the workflows and steps in this process: its CPU is the "client" figure."""

    def __init__(self, timeout: float, database: Database) -> None:
        super().__init__(timeout)
        self.meter = CpuMeter([], database.server_pid)
        self._fsync = database.settings.get("fsync") == "on"

    def more_metrics(self) -> dict[str, float]:
        return {"pg_fsync_on": float(self._fsync)}


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
