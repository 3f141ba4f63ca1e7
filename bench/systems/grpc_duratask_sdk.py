"""duratask's own SDK (worker and async client in this process) over `Endpoint=` against
`duratask serve` (durable SQLite) in a process of its own.

The orchestrations, the activities and the driver are those of the embedded duratask system
(bench/systems/duratask_system.py); only the connection string differs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench.driver import Metered, Params, SystemUnavailable
from bench.systems.duratask_system import DurataskDriver, _build_worker
from bench.systems.grpc_path import CpuMeter, duratask_serve_command, free_port, server_process


class EndpointDriver(Metered, DurataskDriver):
    """The embedded system's driver, counting instances for the CPU figures."""

    def __init__(self, client: object, timeout: float, meter: CpuMeter) -> None:
        super().__init__(client, timeout)  # type: ignore[arg-type]
        self.meter = meter


@asynccontextmanager
async def open_driver(params: Params) -> AsyncIterator[EndpointDriver]:
    try:
        from duratask import DurableTaskClient
    except ImportError as exc:
        raise SystemUnavailable(f"duratask SDK not available ({exc})") from exc
    port = free_port()
    async with server_process(duratask_serve_command(params.workdir, port), port) as server:
        meter = CpuMeter(server)
        endpoint = f"Endpoint=http://{server.address};TaskHub=default;Authentication=None"
        worker = _build_worker(endpoint)
        async with worker, DurableTaskClient(endpoint) as client:
            yield EndpointDriver(client, params.timeout, meter)
