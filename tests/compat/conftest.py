"""Fixtures of the compatibility suite: a real `duratask serve` on loopback (durable SQLite in
tmp_path) and the official SDKs' clients and workers, in both flavours of the Python SDK:
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

FLAVOURS = ("durabletask", "azuremanaged")


@pytest.fixture(scope="module", params=FLAVOURS)
def flavour(request: Any) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any, flavour: str) -> Iterator[ServerThread]:
    """One server per flavour and test module (tests use their own instance ids)."""
    db = tmp_path_factory.mktemp(f"serve-{flavour}") / "serve.db"
    running = ServerThread(storage=f"sqlite:///{db}", taskhubs=("default", "other"))
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
