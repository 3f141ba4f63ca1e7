"""``SyncDurableTaskClient``: the blocking face of ``DurableTaskClient``.

It wraps the async client, never copies it: each method runs the async one on an event loop that
the wrapper keeps in a background thread, and blocks until it returns.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

from .client import DurableTaskClient

P = ParamSpec("P")
R = TypeVar("R")


class _LoopThread:
    """An event loop running in a daemon thread, for blocking callers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="duratask-sync-client", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class _Blocking(Generic[P, R]):
    """Turns an async method of ``DurableTaskClient`` into a blocking one of the wrapper."""

    def __init__(self, method: Callable[Concatenate[DurableTaskClient, P], Awaitable[R]]) -> None:
        self._method = method

    def __get__(self, obj: SyncDurableTaskClient | None, owner: type | None = None) -> Callable[P, R]:
        method = self._method

        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            assert obj is not None

            async def run() -> R:
                return await method(obj._client, *args, **kwargs)

            return obj._loop.run(run())

        return call


class SyncDurableTaskClient:
    """Blocking ``DurableTaskClient``: same methods, same arguments; ``with`` closes it."""

    def __init__(self, connection_string: str | None = None) -> None:
        self._loop = _LoopThread()
        self._client = DurableTaskClient(connection_string)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the background loop."""
        if self._loop.loop.is_running():
            self._loop.run(self._client.close())
            self._loop.stop()

    schedule_new_orchestration_instance = _Blocking(DurableTaskClient.schedule_new_orchestration_instance)
    get_instance = _Blocking(DurableTaskClient.get_instance)
    wait_for_instance_start = _Blocking(DurableTaskClient.wait_for_instance_start)
    wait_for_instance_completion = _Blocking(DurableTaskClient.wait_for_instance_completion)
    get_all_instances = _Blocking(DurableTaskClient.get_all_instances)
    raise_event = _Blocking(DurableTaskClient.raise_event)
    terminate_instance = _Blocking(DurableTaskClient.terminate_instance)
    suspend_instance = _Blocking(DurableTaskClient.suspend_instance)
    resume_instance = _Blocking(DurableTaskClient.resume_instance)
    purge_instance = _Blocking(DurableTaskClient.purge_instance)
    purge_all_instances = _Blocking(DurableTaskClient.purge_all_instances)
    get_orchestration_history = _Blocking(DurableTaskClient.get_orchestration_history)
