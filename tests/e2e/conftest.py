"""Connection strings the end-to-end suite runs over, and a running worker for each test."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from duratask import DurableTaskClient, Worker
from duratask.connection import parse

from .orchestrations import register_all

# "postgres": the session's PostgreSQL server (tests/pgserver.py), a task hub of the test's own.
# "grpc": duratask's own client and worker against `duratask serve` (in this process) over gRPC;
# "grpc-postgres": the same, the server keeping its state in PostgreSQL.
EMBEDDED = ["sqlite", "memory", "postgres"]
KINDS = [*EMBEDDED, "grpc", "grpc-postgres"]


def make_connection(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'e2e.db'}?lease_seconds=5"
    if kind == "memory":
        return f"memory://?taskhub=t{uuid.uuid4().hex[:12]}"
    if kind == "postgres":
        from tests.pgserver import SESSION_ID, session_database_url

        return f"{session_database_url()}?taskhub=e2e_{SESSION_ID}_{uuid.uuid4().hex[:12]}&lease_seconds=5"
    raise ValueError(kind)


@contextlib.contextmanager
def served(tmp_path: Path, storage_kind: str = "sqlite") -> Iterator[str]:
    """`duratask serve` over a SQLite file (or ``storage_kind``'s storage), on a free port, on an
    event loop of its own thread (so that blocking tests can call it too); yields its Endpoint=
    connection string. The task hub is the storage's own (unique per test on PostgreSQL)."""
    from duratask.server.app import start_server

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="duratask-e2e-server", daemon=True)
    thread.start()

    def on_loop(coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    storage = make_connection(storage_kind, tmp_path)
    hub = parse(storage).taskhub
    server = on_loop(start_server(storage=storage, host="127.0.0.1", port=0, taskhubs=(hub,)))
    try:
        yield f"Endpoint=http://127.0.0.1:{server.port};TaskHub={hub};Authentication=None"
    finally:
        on_loop(server.stop(0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(params=KINDS)
def connection(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param.startswith("grpc"):
        storage_kind = request.param.partition("-")[2] or "sqlite"
        with served(tmp_path, storage_kind) as endpoint:
            yield endpoint
    else:
        yield make_connection(request.param, tmp_path)


@pytest.fixture
async def worker(connection: str) -> AsyncIterator[Worker]:
    w = register_all(Worker(connection, shutdown_timeout=2))
    async with w:
        yield w


@pytest.fixture
async def client(connection: str, worker: Worker) -> AsyncIterator[DurableTaskClient]:
    async with DurableTaskClient(connection) as c:
        yield c
