"""The systems under test: each one is a module with `open_driver(params)` and a set of workloads."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from bench.driver import Driver, Params, SystemUnavailable

ALL_WORKLOADS = ("chain3", "latency", "fanout", "memory")
PEER_WORKLOADS = frozenset({"chain3", "latency", "fanout"})


@dataclass(frozen=True)
class SystemInfo:
    name: str
    module: str
    workloads: frozenset[str]
    description: str

    def open_driver(self) -> Callable[[Params], AbstractAsyncContextManager[Driver]]:
        # Imported lazily so that the parent process never imports a peer (isolation, start-up time).
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise SystemUnavailable(f"{self.name} is not installed ({exc})") from exc
        opener: Callable[[Params], AbstractAsyncContextManager[Driver]] = module.open_driver
        return opener


SYSTEMS: dict[str, SystemInfo] = {
    info.name: info
    for info in (
        SystemInfo(
            "duratask",
            "bench.systems.duratask_system",
            frozenset(ALL_WORKLOADS),
            "duratask embedded, SQLite file (durable default), worker + client in one process",
        ),
        SystemInfo(
            "dbos",
            "bench.systems.dbos_system",
            PEER_WORKLOADS,
            "DBOS on its SQLite system database; async workflows, async steps",
        ),
        SystemInfo(
            "durabletask",
            "bench.systems.durabletask_system",
            PEER_WORKLOADS,
            "official durabletask SDK; in-memory gRPC sidecar (durabletask.testing) in its own process",
        ),
        # The gRPC path (bench/systems/grpc_path.py): every server in a process of its own, its CPU
        # reported apart (server_cpu_ms_per_instance, sdk_cpu_ms_per_instance).
        SystemInfo(
            "grpc-official-duratask",
            "bench.systems.grpc_official_duratask",
            PEER_WORKLOADS,
            "official durabletask SDK (worker + client) -> `duratask serve` on SQLite (durable), own process",
        ),
        SystemInfo(
            "grpc-official-inmemory",
            "bench.systems.grpc_official_inmemory",
            PEER_WORKLOADS,
            "official durabletask SDK (worker + client) -> its in-memory backend (durabletask.testing), own process",
        ),
        # The same two with the official worker in a process of its own (client here), as deployed.
        SystemInfo(
            "grpc-official-duratask-split",
            "bench.systems.grpc_official_duratask_split",
            PEER_WORKLOADS,
            "official durabletask SDK, worker in its own process, client here -> `duratask serve` (durable)",
        ),
        SystemInfo(
            "grpc-official-inmemory-split",
            "bench.systems.grpc_official_inmemory_split",
            PEER_WORKLOADS,
            "official durabletask SDK, worker in its own process, client here -> its in-memory backend",
        ),
        SystemInfo(
            "grpc-duratask-sdk",
            "bench.systems.grpc_duratask_sdk",
            PEER_WORKLOADS,
            "duratask SDK (worker + client) over Endpoint= -> `duratask serve` on SQLite (durable), own process",
        ),
        # PostgreSQL (bench/pg.py; `python -m bench.postgres` runs them all on one durable server):
        # the duratask client here and its worker in 1, 2 or 4 processes; DBOS on the same server.
        *(
            SystemInfo(
                f"pg-duratask-{n}w",
                f"bench.systems.postgres_duratask_{n}w",
                PEER_WORKLOADS,
                f"duratask on PostgreSQL: client here, Worker in {n} process(es) of its own",
            )
            for n in (1, 2, 4)
        ),
        SystemInfo(
            "pg-duratask-inproc",
            "bench.systems.postgres_duratask_inproc",
            PEER_WORKLOADS,
            "duratask on PostgreSQL: client and Worker in the benchmark process (as DBOS runs)",
        ),
        SystemInfo(
            "pg-dbos",
            "bench.systems.postgres_dbos",
            PEER_WORKLOADS,
            "DBOS on PostgreSQL (system database on the same server), one process, sync workflows",
        ),
    )
}
