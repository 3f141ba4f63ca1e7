"""duratask on PostgreSQL with the worker in the benchmark process, next to the client.

For comparison with the multi-process systems (postgres_duratask.py) and with DBOS, which also
runs its workflows in the process that starts them: client and worker share one storage object
(one pool, one listener), so their hand-offs skip the round trip through LISTEN/NOTIFY.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from bench.driver import Metered, Params, SystemUnavailable
from bench.pg import CpuMeter, Database, fresh_database
from bench.systems.duratask_system import DurataskDriver, _build_worker
from tests.pgcluster import PostgresUnavailable

if TYPE_CHECKING:
    from duratask import DurableTaskClient


class InProcessDriver(Metered, DurataskDriver):
    """Counts instances for CPU figures: of this process (client and worker) and of the server."""

    def __init__(self, client: DurableTaskClient, timeout: float, database: Database) -> None:
        super().__init__(client, timeout)
        self.meter = CpuMeter([], database.server_pid)
        self._fsync = database.settings.get("fsync") == "on"

    def more_metrics(self) -> dict[str, float]:
        return {"pg_fsync_on": float(self._fsync)}


@asynccontextmanager
async def open_driver(params: Params) -> AsyncIterator[InProcessDriver]:
    try:
        from duratask import DurableTaskClient
    except ImportError as exc:
        raise SystemUnavailable(f"duratask SDK not available ({exc})") from exc
    try:
        with fresh_database("duratask") as database:
            worker = _build_worker(database.url)
            async with worker, DurableTaskClient(database.url) as client:
                yield InProcessDriver(client, params.timeout, database)
    except PostgresUnavailable as exc:
        raise SystemUnavailable(str(exc)) from exc
