"""A running dashboard for tests: worker + SQLite file + dashboard (uvicorn) on a free port, all on
an event loop of their own thread, so that blocking tests (the browser, urllib) can drive it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from duratask import DurableTaskClient, OrchestrationMetadata, Worker
from duratask.dashboard.app import bind, create_app, serve_app

from .orchestrations import register_all

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Dashboard:
    """The dashboard's address, and a client on the same task hub to arrange instances with."""

    url: str
    connection: str
    loop: asyncio.AbstractEventLoop
    client: DurableTaskClient

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(
        self,
        orchestrator: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
    ) -> str:
        return self.run(
            self.client.schedule_new_orchestration_instance(
                orchestrator, input, instance_id=instance_id or f"t-{uuid.uuid4().hex}", start_at=start_at
            )
        )

    def wait_started(self, instance_id: str) -> OrchestrationMetadata:
        meta = self.run(self.client.wait_for_instance_start(instance_id, timeout=20))
        assert meta is not None
        return meta

    def wait_done(self, instance_id: str) -> OrchestrationMetadata:
        meta = self.run(self.client.wait_for_instance_completion(instance_id, True, timeout=20))
        assert meta is not None
        return meta

    def wait_custom_status(self, instance_id: str, expected: str) -> None:
        """Until the instance's custom status is ``expected`` (JSON text): it reached that step."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            meta = self.run(self.client.get_instance(instance_id, True))
            if meta is not None and meta.serialized_custom_status == expected:
                return
            time.sleep(0.05)
        raise AssertionError(f"{instance_id} never had custom status {expected}")

    def get(self, instance_id: str) -> OrchestrationMetadata | None:
        return self.run(self.client.get_instance(instance_id, True))


def http(
    method: str, url: str, body: bytes | None = None, content_type: str | None = "application/json"
) -> tuple[int, Any]:
    """One request; returns (status, parsed JSON or text)."""
    request = urllib.request.Request(url, data=body, method=method)
    if content_type and body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def _wait_until_up(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if http("GET", f"{url}api/info")[0] == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"dashboard at {url} did not come up")


@contextlib.contextmanager
def running_dashboard(directory: Path) -> Iterator[Dashboard]:
    connection = f"sqlite:///{directory / 'dashboard.db'}?lease_seconds=5"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dashboard-e2e", daemon=True)
    thread.start()

    def on_loop(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    worker = register_all(Worker(connection, shutdown_timeout=2))
    client = DurableTaskClient(connection)
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"

    async def begin() -> asyncio.Task[None]:
        await worker.__aenter__()
        await client.__aenter__()
        return asyncio.ensure_future(serve_app(create_app(connection), sock))

    async def end(serving: asyncio.Task[None]) -> None:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await client.close()
        await worker.__aexit__(None, None, None)

    serving = on_loop(begin())
    try:
        _wait_until_up(url)
        yield Dashboard(url=url, connection=connection, loop=loop, client=client)
    finally:
        on_loop(end(serving))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
