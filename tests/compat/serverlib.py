"""A real `duratask serve` for tests: in a background thread with its own event loop, or as a
subprocess (`python -m duratask.server`-like entry through `serve()`), on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

import grpc

from duratask.protocol import pb_grpc
from duratask.server.app import RunningServer, start_server


class ServerThread:
    """`start_server(**settings)` on an event loop of its own, so blocking SDK clients can call it."""

    def __init__(self, **settings: Any) -> None:
        self._settings = {"port": 0, **settings}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.server: RunningServer | None = None
        self._thread = threading.Thread(target=self._run, name="duratask-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("test server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        try:
            self.server = await start_server(**self._settings)
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor
            self._error = exc
            self._ready.set()
            return
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await self.server.stop(grace=1.0)

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop (to look at its backends) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """`duratask.server.app.serve(...)` in a subprocess (for SIGTERM and crash behaviour)."""

    def __init__(self, storage: str, **kwargs: Any) -> None:
        self.port = kwargs.pop("port", None) or free_port()
        args = {"storage": storage, "port": self.port, **kwargs}
        code = (
            "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr);"
            f"from duratask.server.app import serve; serve(**{args!r})"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_until_serving(self.address)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self, timeout: float = 30) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, output.decode(errors="replace")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.communicate(timeout=30)


def wait_until_serving(address: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with grpc.insecure_channel(address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nothing serves {address}") from None


@contextlib.contextmanager
def stub(address: str) -> Iterator[Any]:
    """duratask's own generated stub (raw protocol calls, for the bad-input tests)."""
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.TaskHubSidecarServiceStub(channel)


def quiet_logger(name: str) -> logging.Logger:
    """The official SDKs log a line per work item at INFO; tests want warnings only."""
    logger = logging.getLogger(f"compat.{name}")
    logger.setLevel(logging.WARNING)
    return logger


# --- a hand-driven worker, speaking the raw protocol (for the bad-input and dispatch tests) -----


class RawWorker:
    """One `GetWorkItems` stream over grpc.aio, driven by hand: the test plays the worker.

    A background task reads the stream into a queue (cancelling a pending read would cancel the
    whole call, that is, disconnect the worker)."""

    def __init__(self, address: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = pb_grpc.TaskHubSidecarServiceStub(self.channel)
        self.metadata = metadata
        self.call: Any = None
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, **request: Any) -> RawWorker:
        from duratask.protocol import pb

        self.call = self.stub.GetWorkItems(pb.GetWorkItemsRequest(**request), metadata=self.metadata)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for item in self.call:
                self._items.put_nowait(item)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads next
            self._items.put_nowait(exc)
        else:
            self._items.put_nowait(EOFError("the work-item stream ended"))

    async def next(self, timeout: float = 10.0, pings: bool = False) -> Any:
        """The next work item (HealthPings skipped unless ``pings``); TimeoutError if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no work item came")
            item = await asyncio.wait_for(self._items.get(), remaining)
            if isinstance(item, BaseException):
                raise item
            if pings or item.WhichOneof("request") != "healthPing":
                return item

    async def nothing_for(self, seconds: float) -> None:
        """Assert that no work item (pings aside) arrives for ``seconds``."""
        with contextlib.suppress(TimeoutError):
            item = await self.next(timeout=seconds)
            raise AssertionError(f"unexpected work item: {item}")

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
