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
    )
}
