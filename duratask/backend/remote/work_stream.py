"""The worker's end of ``GetWorkItems``: one server stream, read by a background task into two queues.

The stream opens on first use and reopens with backoff when it drops. Work items still queued
when their stream drops are forgotten: the scheduler re-delivers whatever it handed to a stream
that went away. Health pings are ignored; entity work items, which duratask does not run, go
to ``on_unsupported`` (the backend abandons them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from ..api import WorkKind

log = logging.getLogger("duratask.backend.remote")

RECONNECT_MIN_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0
# A stream that stayed open this long was healthy, even if it carried nothing: reset the backoff.
HEALTHY_AFTER_SECONDS = 10.0
# Codes that retrying will not fix without someone changing a setting: logged as errors.
_MISCONFIGURED = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
}


class WorkItemStream:
    """Queues of ``pb.WorkItem`` messages, by kind, fed by one ``GetWorkItems`` stream.

    ``open_call()`` starts the RPC (a ``grpc.aio`` unary-stream call). Use it from one event loop.
    """

    def __init__(self, open_call: Callable[[], Any], on_unsupported: Callable[[Any], None]) -> None:
        self._open_call = open_call
        self._on_unsupported = on_unsupported
        self._queues: dict[WorkKind, deque[Any]] = {"orchestration": deque(), "activity": deque()}
        self._ready: dict[WorkKind, asyncio.Event] = {
            "orchestration": asyncio.Event(),
            "activity": asyncio.Event(),
        }
        self._routes: dict[str, Callable[[Any], None]] = {
            "orchestratorRequest": lambda message: self._queue("orchestration", message),
            "activityRequest": lambda message: self._queue("activity", message),
            "healthPing": lambda message: None,
            "entityRequest": on_unsupported,
            "entityRequestV2": on_unsupported,
        }
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        #: How many times a stream was opened (tests watch reconnections with it).
        self.opened = 0

    def start(self) -> None:
        """Open the stream in the background, unless it is already running (or was closed)."""
        if self._reader is None and not self._closed:
            self._reader = asyncio.get_running_loop().create_task(self._run(), name="duratask-work-items")

    def take(self, kind: WorkKind, limit: int) -> list[Any]:
        """Up to ``limit`` queued work items of ``kind``, without waiting."""
        queue = self._queues[kind]
        taken = [queue.popleft() for _ in range(min(limit, len(queue)))]
        if not queue:
            self._ready[kind].clear()
        return taken

    async def wait(self, kind: WorkKind, timeout: float) -> None:
        """Return when a work item of ``kind`` is queued, or after ``timeout`` seconds."""
        if self._queues[kind]:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready[kind].wait(), timeout)

    async def close(self) -> list[Any]:
        """Stop reading for good; returns the work items that were queued and never taken."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        left = [*self._queues["orchestration"], *self._queues["activity"]]
        self._forget_queued()
        return left

    def _queue(self, kind: WorkKind, message: Any) -> None:
        self._queues[kind].append(message)
        self._ready[kind].set()

    def _forget_queued(self) -> None:
        for queue in self._queues.values():
            queue.clear()

    def _dispatch(self, message: Any) -> None:
        which = message.WhichOneof("request")
        route = self._routes.get(which)
        if route is None:
            log.warning("ignoring a work item of unknown kind %r", which)
            return
        route(message)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RECONNECT_MIN_SECONDS
        healthy = True  # so that the first failure is reported
        while True:
            opened_at = loop.time()
            received = False
            call = self._open_call()
            self.opened += 1
            try:
                async for message in call:
                    received = True
                    self._dispatch(message)
                failure = "the scheduler closed the work-item stream"
                level = logging.INFO
            except grpc.aio.AioRpcError as exc:
                failure = f"the work-item stream failed: {exc.code().name}: {exc.details()}"
                level = logging.ERROR if exc.code() in _MISCONFIGURED else logging.WARNING
            except Exception:  # a bug of ours must not stop the worker from receiving work
                log.exception("error while reading the work-item stream")
                failure, level = "reading the work-item stream failed", logging.WARNING
            finally:
                call.cancel()
            self._forget_queued()  # the scheduler re-delivers what it gave the dropped stream
            if received or loop.time() - opened_at >= HEALTHY_AFTER_SECONDS:
                healthy, delay = True, RECONNECT_MIN_SECONDS
            log.log(level if healthy else logging.DEBUG, "%s; reconnecting in %.1f s", failure, delay)
            healthy = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)
