"""Connection strings the end-to-end suite runs over, and a running worker for each test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from duratask import DurableTaskClient, Worker

from .orchestrations import register_all

EMBEDDED = ["sqlite", "memory"]


def make_connection(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'e2e.db'}?lease_seconds=5"
    if kind == "memory":
        return f"memory://?taskhub=t{uuid.uuid4().hex[:12]}"
    raise ValueError(kind)


@pytest.fixture(params=EMBEDDED)
def connection(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_connection(request.param, tmp_path)


@pytest.fixture
async def worker(connection: str) -> AsyncIterator[Worker]:
    w = register_all(Worker(connection, shutdown_timeout=2))
    async with w:
        yield w


@pytest.fixture
async def client(connection: str, worker: Worker) -> AsyncIterator[DurableTaskClient]:
    async with DurableTaskClient(connection) as c:
        yield c
