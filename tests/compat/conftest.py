"""Fixtures of the compatibility suite: a real `duratask serve` on loopback (durable SQLite in
tmp_path) and the official SDKs' clients and workers, in both flavours of the Python SDK:
`durabletask` (TaskHubGrpcClient/Worker) and `durabletask-azuremanaged` (DurableTaskScheduler*,
which sends the `taskhub` metadata as it does to the Durable Task Scheduler)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from durabletask import client as dt_client
from durabletask import worker as dt_worker
from durabletask.azuremanaged.client import DurableTaskSchedulerClient
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker

from tests.compat.serverlib import ServerThread, quiet_logger

FLAVOURS = ("durabletask", "azuremanaged")


@pytest.fixture
def server(tmp_path: Any) -> Iterator[ServerThread]:
    running = ServerThread(storage=f"sqlite:///{tmp_path / 'serve.db'}", taskhubs=("default", "other"))
    yield running
    running.stop()


@pytest.fixture(params=FLAVOURS)
def flavour(request: Any) -> str:
    return str(request.param)


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


@pytest.fixture
def client(server: ServerThread, flavour: str) -> Iterator[Any]:
    c = make_client(flavour, server.address)
    yield c
    c.close()


@pytest.fixture
def start_worker(server: ServerThread, flavour: str) -> Iterator[Callable[..., Any]]:
    """`start_worker(orchestrators=[...], activities=[...], **worker_kwargs)`: a running worker."""
    started: list[Any] = []

    def start(orchestrators: list[Any] = (), activities: list[Any] = (), **kwargs: Any) -> Any:  # type: ignore[assignment]
        w = make_worker(flavour, server.address, **kwargs)
        for fn in orchestrators:
            w.add_orchestrator(fn)
        for fn in activities:
            w.add_activity(fn)
        w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
