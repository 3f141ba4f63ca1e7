"""``Worker``: leases work items, runs orchestrators and activities, completes them (SPEC §3).

Two loops share one Backend:

- the orchestration loop leases a batch of instances, runs one episode for each (a cached live
  executor when its history length still matches, else a replay of the stored history) and
  completes the whole batch in one group commit;
- the activity loop leases up to the free concurrency slots, runs each activity as its own task
  (plain functions in a thread pool) and hands results to a completer that commits them in batches.

On shutdown the worker stops leasing, lets running activities finish for a grace period, and hands
back whatever is unfinished so another worker gets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar, overload

from . import history as h
from .backend.api import ActivityWorkItem, Backend, OrchestrationResult, OrchestrationWorkItem
from .connection import open_backend
from .models import OrchestrationRuntimeStatus, TaskFailureDetails
from .orchestration.context import name_of
from .orchestration.executor import OrchestrationExecutor, failure_details_of
from .serialization import from_json, input_type_of, to_json

log = logging.getLogger("duratask.worker")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ActivityContext:
    """What an activity knows about the call that started it (its first argument).

    ``orchestration_id`` is the calling instance's id, ``task_id`` the call's step number in that
    orchestration (the pair is the same for every delivery of one call, though step numbers start
    again after a continue-as-new), ``task_name`` the name it was called by. ``attempt`` counts
    deliveries of this call to a worker: 1, or more after a crash or hand-back (not ``RetryPolicy``
    attempts, which are new calls; always 1 over an ``Endpoint=`` connection).
    """

    orchestration_id: str
    task_id: int
    task_name: str
    attempt: int = 1


@dataclass
class _CachedExecution:
    execution_id: str
    executor: OrchestrationExecutor


class Worker:
    """Runs the orchestrators and activities registered on it against one task hub.

    ``connection_string`` is ``sqlite:///path.db``, ``memory://``, ``postgresql://...`` or
    ``Endpoint=...;TaskHub=...;Authentication=...`` (default: ``DURATASK_CONNECTION_STRING``, else
    ``sqlite:///duratask.db``). ``max_concurrent_orchestrations`` bounds the episodes leased at once,
    ``max_concurrent_activities`` the activities running at once (and the thread pool that runs
    plain activity functions), ``shutdown_timeout`` how long ``stop()`` lets running activities
    finish, ``orchestration_cache_size`` how many live orchestrator states are kept between
    episodes. ``backend`` replaces the connection string with an opened Backend (tests, embedding).
    Run it with ``async with worker:``, ``worker.run()`` (blocking) or
    ``duratask worker module:attribute``.
    """

    def __init__(
        self,
        connection_string: str | None = None,
        *,
        max_concurrent_orchestrations: int = 200,
        max_concurrent_activities: int = 200,
        shutdown_timeout: float = 30.0,
        orchestration_cache_size: int = 20_000,
        backend: Backend | None = None,
    ) -> None:
        if max_concurrent_orchestrations < 1 or max_concurrent_activities < 1:
            raise ValueError("concurrency limits must be at least 1")
        self._connection_string = connection_string
        self._backend = backend
        self._owns_backend = backend is None
        self.max_concurrent_orchestrations = max_concurrent_orchestrations
        self.max_concurrent_activities = max_concurrent_activities
        self.shutdown_timeout = shutdown_timeout
        self._cache_size = orchestration_cache_size
        self._orchestrators: dict[str, Callable[..., Any]] = {}
        self._activities: dict[str, Callable[..., Any]] = {}
        self._cache: OrderedDict[str, _CachedExecution] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self._running_activities: dict[asyncio.Task[None], ActivityWorkItem] = {}
        self._completions: asyncio.Queue[tuple[ActivityWorkItem, h.TaskCompleted | h.TaskFailed]] | None = (
            None
        )
        self._slot_free: asyncio.Event | None = None
        self._commit_done: asyncio.Event | None = None
        self._orchestrations_committing = 0
        self._commits: set[asyncio.Task[None]] = set()
        self._threads: ThreadPoolExecutor | None = None
        self._stopping = False

    # --- registration ------------------------------------------------------------------------

    @overload
    def orchestrator(self, fn: F, /) -> F: ...
    @overload
    def orchestrator(self, *, name: str | None = None) -> Callable[[F], F]: ...

    def orchestrator(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:  # type: ignore[misc]  # mypy 2.4 misreads keyword-only overloads
        """Register an orchestrator (``async def`` or generator); ``@worker.orchestrator(name=...)``."""

        def register(f: Any) -> Any:
            self.add_orchestrator(f, name=name)
            return f

        return register(fn) if fn is not None else register

    @overload
    def activity(self, fn: F, /) -> F: ...
    @overload
    def activity(self, *, name: str | None = None) -> Callable[[F], F]: ...

    def activity(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:  # type: ignore[misc]  # as above
        """Register an activity (plain or ``async def``); ``@worker.activity(name=...)``."""

        def register(f: Any) -> Any:
            self.add_activity(f, name=name)
            return f

        return register(fn) if fn is not None else register

    def add_orchestrator(self, fn: Callable[..., Any], *, name: str | None = None) -> str:
        """Register an orchestrator under ``name`` (default: ``fn.__name__``); returns the name.

        Raises ``ValueError`` if another function already has the name.
        """
        return _register(self._orchestrators, fn, name, "orchestrator")

    def add_activity(self, fn: Callable[..., Any], *, name: str | None = None) -> str:
        """Register an activity under ``name`` (default: ``fn.__name__``); returns the name.

        Raises ``ValueError`` if another function already has the name.
        """
        return _register(self._activities, fn, name, "activity")

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start the background loops on the running event loop."""
        if self._tasks:
            raise RuntimeError("worker already started")
        if self._backend is None:
            self._backend = await open_backend(
                self._connection_string,
                max_concurrent_orchestrations=self.max_concurrent_orchestrations,
                max_concurrent_activities=self.max_concurrent_activities,
            )
        self._stopping = False
        self._completions = asyncio.Queue()
        self._slot_free = asyncio.Event()
        self._commit_done = asyncio.Event()
        self._threads = ThreadPoolExecutor(
            self.max_concurrent_activities, thread_name_prefix="duratask-activity"
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._orchestration_loop(), name="duratask-orchestrations"),
            loop.create_task(self._activity_loop(), name="duratask-activities"),
            loop.create_task(self._completer(), name="duratask-activity-completions"),
        ]

    async def stop(self) -> None:
        """Stop leasing, let running activities finish (``shutdown_timeout``), hand back the rest.

        A plain activity still running is handed back but cannot be interrupted: its thread runs
        to the end and its result is discarded, so the call may run twice.
        """
        if not self._tasks:
            return
        self._stopping = True
        lease_loops, completer = self._tasks[:2], self._tasks[2]
        for task in lease_loops:
            task.cancel()
        await asyncio.gather(*lease_loops, return_exceptions=True)
        await asyncio.gather(*self._commits, return_exceptions=True)
        if self._running_activities:
            await asyncio.wait(list(self._running_activities), timeout=self.shutdown_timeout)
        backend = self._backend
        assert backend is not None and self._completions is not None
        for task, item in list(self._running_activities.items()):
            task.cancel()
            with contextlib.suppress(Exception):
                await backend.abandon_activity(item)
        await self._completions.join()
        completer.cancel()
        await asyncio.gather(completer, return_exceptions=True)
        await backend.release_prefetched()  # best effort per item (the leases expire anyway)
        self._tasks = []
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._owns_backend:
            await backend.close()
            self._backend = None
        self._cache.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def run(self) -> None:
        """Run until SIGINT or SIGTERM, then shut down cleanly (blocking)."""
        asyncio.run(self._run_until_signalled())

    async def _run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
                loop.add_signal_handler(sig, stop.set)
        async with self:
            await stop.wait()

    # --- orchestrations -----------------------------------------------------------------------

    async def _orchestration_loop(self) -> None:
        """Lease, run, and hand the batch to a commit task: the next batch runs while it commits."""
        backend = self._backend
        assert backend is not None and self._commit_done is not None
        while not self._stopping:
            try:
                free = self.max_concurrent_orchestrations - self._orchestrations_committing
                if free <= 0:
                    self._commit_done.clear()
                    await self._commit_done.wait()
                    continue
                items = await backend.lease_orchestrations(free)
                if items:
                    done = [(item, await self._run_episode(backend, item)) for item in items]
                    self._orchestrations_committing += len(done)
                    commit = asyncio.get_running_loop().create_task(self._commit_episodes(backend, done))
                    self._commits.add(commit)
                    commit.add_done_callback(self._commits.discard)
                # At once if the lease was full or work came meanwhile; else until some is queued.
                await backend.wait_for_work("orchestration", 5.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("orchestration loop error; retrying")
                await asyncio.sleep(0.5)

    async def _commit_episodes(
        self, backend: Backend, done: list[tuple[OrchestrationWorkItem, OrchestrationResult]]
    ) -> None:
        try:
            # Lease the activities these episodes schedule in the same transaction, as far as
            # there is room: the activity loop finds them without a trip to the storage.
            room = 0 if self._stopping else self.max_concurrent_activities - len(self._running_activities)
            applied = await backend.complete_orchestrations(done, lease_activities=room)
        except Exception:
            log.exception("committing %d orchestration episodes failed; they will be re-delivered", len(done))
            applied = [False] * len(done)
        finally:
            self._orchestrations_committing -= len(done)
            assert self._commit_done is not None
            self._commit_done.set()
        self._after_commit(done, applied)

    async def _run_episode(self, backend: Backend, item: OrchestrationWorkItem) -> OrchestrationResult:
        fn = self._orchestrators.get(item.name)
        if fn is None:
            return _fail(
                f"no orchestrator named {item.name!r} is registered with this worker",
                "OrchestratorNotRegistered",
            )
        executor = self._take_cached(item)
        past: list[h.HistoryEvent] = []
        if executor is None:  # cache miss: replay the stored history
            if item.history is not None:
                past = item.history
            elif item.history_length:
                past = await backend.get_history(item.instance_id)
            executor = OrchestrationExecutor(fn, instance_id=item.instance_id)
        try:
            result = executor.execute(past, item.new_events)
        except Exception as exc:  # an engine bug must fail one instance, not the worker
            log.exception("executor failed on instance %s", item.instance_id)
            return OrchestrationResult(
                actions=[
                    h.CompleteOrchestration(
                        id=-1, status=OrchestrationRuntimeStatus.FAILED, failure=failure_details_of(exc)
                    )
                ]
            )
        if not result.is_complete:
            self._cache[item.instance_id] = _CachedExecution(item.execution_id, executor)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return OrchestrationResult(actions=result.actions, custom_status=result.custom_status)

    def _take_cached(self, item: OrchestrationWorkItem) -> OrchestrationExecutor | None:
        """The live executor of this execution, if it has seen exactly the stored history."""
        cached = self._cache.pop(item.instance_id, None)
        if cached is None or cached.execution_id != item.execution_id:
            return None
        if cached.executor.history_length != item.history_length:
            return None
        return cached.executor

    def _after_commit(
        self, done: list[tuple[OrchestrationWorkItem, OrchestrationResult]], applied: list[bool]
    ) -> None:
        for (item, _), ok in zip(done, applied):
            if not ok:  # lease lost: our cached state may be ahead of what is stored
                self._cache.pop(item.instance_id, None)

    # --- activities -----------------------------------------------------------------------------

    async def _activity_loop(self) -> None:
        backend = self._backend
        assert backend is not None and self._slot_free is not None
        while not self._stopping:
            try:
                free = self.max_concurrent_activities - len(self._running_activities)
                if free <= 0:
                    self._slot_free.clear()
                    await self._slot_free.wait()
                    continue
                items = await backend.lease_activities(free)
                loop = asyncio.get_running_loop()
                for item in items:
                    task = loop.create_task(self._run_activity(item))
                    self._running_activities[task] = item
                    task.add_done_callback(self._activity_done)
                await backend.wait_for_work("activity", 5.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("activity loop error; retrying")
                await asyncio.sleep(0.5)

    def _activity_done(self, task: asyncio.Task[None]) -> None:
        self._running_activities.pop(task, None)
        if self._slot_free is not None:
            self._slot_free.set()

    async def _run_activity(self, item: ActivityWorkItem) -> None:
        assert self._completions is not None
        now = datetime.now(UTC)
        fn = self._activities.get(item.name)
        event: h.TaskCompleted | h.TaskFailed
        try:
            if fn is None:
                raise ActivityNotRegisteredError(
                    f"no activity named {item.name!r} is registered with this worker"
                )
            value = from_json(item.input, input_type_of(fn))
            ctx = ActivityContext(item.instance_id, item.task_id, item.name, item.attempt)
            if inspect.iscoroutinefunction(fn):
                output = await fn(ctx, value)
            else:
                assert self._threads is not None
                output = await asyncio.get_running_loop().run_in_executor(self._threads, fn, ctx, value)
            event = h.TaskCompleted(timestamp=now, task_scheduled_id=item.task_id, result=to_json(output))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - an activity may raise anything; it becomes TaskFailed
            event = h.TaskFailed(
                timestamp=now, task_scheduled_id=item.task_id, failure=failure_details_of(exc)
            )
        await self._completions.put((item, event))

    async def _completer(self) -> None:
        """Commit finished activities in batches: whatever finished while the last commit ran."""
        queue, backend = self._completions, self._backend
        assert queue is not None and backend is not None
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            try:
                # Likewise the orchestrations these results make ready, for the orchestration loop.
                room = 0 if self._stopping else self.max_concurrent_orchestrations - self._orchestrations_committing
                await backend.complete_activities(batch, lease_orchestrations=room)
            except Exception:
                log.exception("committing %d activity results failed; they will be re-delivered", len(batch))
            finally:
                for _ in batch:
                    queue.task_done()


class ActivityNotRegisteredError(LookupError):
    """The worker has no activity of the requested name."""


def _fail(message: str, error_type: str) -> OrchestrationResult:
    failure = TaskFailureDetails(error_type=error_type, error_message=message)
    return OrchestrationResult(
        actions=[h.CompleteOrchestration(id=-1, status=OrchestrationRuntimeStatus.FAILED, failure=failure)]
    )


def _register(
    registry: dict[str, Callable[..., Any]], fn: Callable[..., Any], name: str | None, kind: str
) -> str:
    if not callable(fn):
        raise TypeError(f"{kind} must be callable, got {fn!r}")
    name = name or name_of(fn)
    if name in registry and registry[name] is not fn:
        raise ValueError(f"an {kind} named {name!r} is already registered")
    registry[name] = fn
    if name != getattr(fn, "__name__", None):
        with contextlib.suppress(AttributeError, TypeError):
            fn.__duratask_name__ = name  # type: ignore[attr-defined]  # lets ctx.call_activity(fn) find it
    return name
