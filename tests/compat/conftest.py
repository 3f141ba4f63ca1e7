"""Fixtures of the compatibility suite: a real `duratask serve` on loopback (durable SQLite in
tmp_path, and PostgreSQL) and the official SDKs' clients and workers, in both flavours of the Python SDK:
`durabletask` (TaskHubGrpcClient/Worker) and `durabletask-azuremanaged` (DurableTaskScheduler*,
which sends the `taskhub` metadata as it does to the Durable Task Scheduler)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from durabletask import client as dt_client
from durabletask import worker as dt_worker
from durabletask.azuremanaged.client import DurableTaskSchedulerClient
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker

from tests.compat.serverlib import ServerThread, quiet_logger
from tests.pgserver import session_server

FLAVOURS = ("durabletask", "azuremanaged")
STORAGES = ("sqlite", "postgresql")


@pytest.fixture(scope="module", params=FLAVOURS)
def flavour(request: Any) -> str:
    return str(request.param)


@pytest.fixture(scope="module", params=STORAGES)
def storage(request: Any, tmp_path_factory: Any, flavour: str) -> str:
    """What `duratask serve` keeps its state in: a durable SQLite file, or a database of its own
    on the tests' PostgreSQL server (started on first use)."""
    if request.param == "postgresql":
        return session_server().create_database()
    return f"sqlite:///{tmp_path_factory.mktemp(f'serve-{flavour}') / 'serve.db'}"


@pytest.fixture(scope="module")
def server(storage: str) -> Iterator[ServerThread]:
    """One server per flavour, storage and test module (tests use their own instance ids)."""
    running = ServerThread(storage=storage, taskhubs=("default", "other"))
    yield running
    running.stop()


def make_client(flavour: str, address: str, taskhub: str = "default") -> Any:
    if flavour == "azuremanaged":
        return DurableTaskSchedulerClient(
            host_address=f"http://{address}",
            taskhub=taskhub,
            token_credential=None,
            secure_channel=False,
            logger=quiet_logger("client"),
        )
    return dt_client.TaskHubGrpcClient(host_address=address, logger=quiet_logger("client"))


def make_worker(flavour: str, address: str, taskhub: str = "default", **kwargs: Any) -> Any:
    if flavour == "azuremanaged":
        return DurableTaskSchedulerWorker(
            host_address=f"http://{address}",
            taskhub=taskhub,
            token_credential=None,
            secure_channel=False,
            logger=quiet_logger("worker"),
            **kwargs,
        )
    return dt_worker.TaskHubGrpcWorker(host_address=address, logger=quiet_logger("worker"), **kwargs)


@pytest.fixture(scope="module")
def client(server: ServerThread, flavour: str) -> Iterator[Any]:
    c = make_client(flavour, server.address)
    yield c
    c.close()


def running_worker(
    flavour: str, address: str, orchestrators: Iterable[Any], activities: Iterable[Any]
) -> Any:
    """A started worker of ``flavour`` with these functions registered (stop it when done)."""
    w = make_worker(flavour, address)
    for fn in orchestrators:
        w.add_orchestrator(fn)
    for fn in activities:
        w.add_activity(fn)
    w.start()
    return w
