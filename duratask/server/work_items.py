"""The work-item dispatcher of one task hub: leases from the backend, hands out over worker streams.

Each ``GetWorkItems`` call is a ``WorkerStream``: its concurrency limits (the request's
``maxConcurrent*WorkItems``) and its work-item filters. Two pumps, one per kind of work, lease as
many items as the connected streams have free slots, and give each item to a stream whose filters
accept it. Everything handed out is *in flight*, keyed by its completion token (the lease token,
unique per dispatch); completing or abandoning a token settles it once, and a stream that ends hands
its in-flight items back at once, so another worker gets them without waiting for the lease.

Work-item filters and the storage: the storage leases by age, not by name. An item that no
connected stream accepts is *parked*: kept leased (so the next lease moves on to other items) for
at most ``park_seconds``, delivered as soon as a stream that accepts it has room, else handed back.
The price: with many items that no worker accepts, they cycle through lease, park and hand-back,
and at most ``max_parked`` of them are held at once; beyond that the pump waits.

Leasing is a storage transaction queued with the completions, so while workers hold a good part
of their limit (they have work queued anyway) a pump waits for a batch of free slots and a
moment's accumulation before it leases again; with little in flight it leases at once.

A completion the dispatcher refuses (``INVALID_ARGUMENT``: it contradicts the history it answers,
names another task or instance, or holds actions duratask cannot store) changes nothing stored;
its item stays with the worker for ``refused_hand_back_seconds`` (a corrected completion is still
taken) and then goes back to the queue. On stop, streams end first, results are still taken for
the grace period, then everything unfinished is handed back.

The adapter decides nothing about orchestrations: leases, completions and hand-backs are the
backend's; the dispatcher only routes, counts slots and checks what a worker sends back against
what it was given (``validate_orchestrator_actions``).

Durable entities are a third kind of work: a pump leases entities with messages (the backend
settles lock traffic itself and hands out batches of operations), routes each batch by entity
name, and sends it as an ``entityRequestV2`` (as the Durable Task Scheduler does) or, with
``ServerSettings.entity_request_v2`` off, as the older ``entityRequest``; ``CompleteEntityTask``
completes it. One batch per entity is in flight at a time (its lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import msgspec

from .. import history as h
from ..backend import entities
from ..backend.api import ActivityWorkItem, OrchestrationWorkItem
from ..backend.entities import EntityWorkItem
from ..backend.local import LocalBackend, utcnow
from ..models import OrchestrationRuntimeStatus as Status
from ..protocol import convert, pb
from ..storage.base import OrchestrationCommit
from .errors import RpcError, invalid, not_found
from .history_cache import History, HistoryCache
from .settings import ServerSettings

log = logging.getLogger("duratask.server")

Kind = Literal["orchestration", "activity", "entity"]
ORCHESTRATION: Kind = "orchestration"
ACTIVITY: Kind = "activity"
ENTITY: Kind = "entity"
KINDS: tuple[Kind, ...] = (ORCHESTRATION, ACTIVITY, ENTITY)
#: Kinds whose items are instances with one lease (and so one item in flight) per instance.
_ONE_PER_INSTANCE = frozenset({ORCHESTRATION, ENTITY})


# --- worker streams --------------------------------------------------------------------------


@dataclass(frozen=True)
class NameFilter:
    """Accepted names, each with its accepted versions (empty: any version)."""

    versions_by_name: dict[str, frozenset[str]]

    def accepts(self, name: str, version: str | None) -> bool:
        versions = self.versions_by_name.get(name)
        if versions is None:
            return False
        return not versions or (version or "") in versions

    @classmethod
    def of(cls, filters: Iterable[Any]) -> NameFilter:
        """From the protocol's ``OrchestrationFilter`` / ``ActivityFilter`` / ``EntityFilter`` list
        (an ``EntityFilter`` has no versions). As in the official SDKs' reference backend, a worker
        that sends filters and lists no name of a kind takes nothing of that kind (a worker that
        sends no filters at all takes everything)."""
        table: dict[str, frozenset[str]] = {}
        for f in filters:
            versions = frozenset(f.versions) if hasattr(f, "versions") else frozenset()
            table[f.name] = table.get(f.name, frozenset()) | versions
        return cls(table)


class WorkerStream:
    """One connected ``GetWorkItems`` call: its limits, filters, and the items waiting to be sent."""

    def __init__(self, request: Any, settings: ServerSettings) -> None:
        self.id = uuid.uuid4().hex
        self.limits: dict[Kind, int] = {
            ORCHESTRATION: request.maxConcurrentOrchestrationWorkItems or settings.default_stream_concurrency,
            ACTIVITY: request.maxConcurrentActivityWorkItems or settings.default_stream_concurrency,
            ENTITY: request.maxConcurrentEntityWorkItems or settings.default_stream_concurrency,
        }
        filters = request.workItemFilters if request.HasField("workItemFilters") else None
        self.filters: dict[Kind, NameFilter | None] = {
            ORCHESTRATION: NameFilter.of(filters.orchestrations) if filters is not None else None,
            ACTIVITY: NameFilter.of(filters.activities) if filters is not None else None,
            ENTITY: NameFilter.of(filters.entities) if filters is not None else None,
        }
        self.busy: dict[Kind, int] = {kind: 0 for kind in KINDS}
        self._outbox: deque[Any] = deque()
        self._woken: asyncio.Future[None] | None = None
        self.closed = False

    def free(self, kind: Kind) -> int:
        return 0 if self.closed else max(0, self.limits[kind] - self.busy[kind])

    def send(self, message: Any) -> None:
        """Queue ``message`` for the worker (``None`` ends the stream)."""
        self._outbox.append(message)
        if self._woken is not None and not self._woken.done():
            self._woken.set_result(None)

    async def next_message(self, idle_seconds: float) -> Any:
        """The next queued message, or a ``HealthPing`` once ``idle_seconds`` pass without one.

        A future and a timer rather than ``wait_for`` on a queue: this runs once per work item
        sent, and ``wait_for`` costs a task and several event-loop rounds each time."""
        if not self._outbox:
            loop = asyncio.get_running_loop()
            self._woken = woken = loop.create_future()
            timer = loop.call_later(idle_seconds, _resolve, woken)
            try:
                await woken
            finally:
                timer.cancel()
                self._woken = None
            if not self._outbox:
                return pb.WorkItem(healthPing=pb.HealthPing())
        return self._outbox.popleft()

    def accepts(self, kind: Kind, name: str, version: str | None) -> bool:
        f = self.filters[kind]
        return f is None or f.accepts(name, version)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# --- in-flight items -------------------------------------------------------------------------


@dataclass
class InFlight:
    kind: Kind
    item: OrchestrationWorkItem | ActivityWorkItem | EntityWorkItem
    stream: WorkerStream
    #: for orchestrations: the event ids the history already gave a scheduling event, by kind
    scheduled: dict[int, Scheduled] = field(default_factory=dict)
    #: for orchestrations: the history the item went out with
    history: History | None = None


@dataclass
class _Parked:
    kind: Kind
    item: OrchestrationWorkItem | ActivityWorkItem | EntityWorkItem
    name: str
    version: str | None
    deadline: float
    history: History | None = None


_SCHEDULING_EVENT_OF_ACTION: dict[type, type] = {
    h.ScheduleTask: h.TaskScheduled,
    h.CreateTimer: h.TimerCreated,
    h.CreateSubOrchestration: h.SubOrchestrationInstanceCreated,
    h.SendEvent: h.EventSent,
}
_SCHEDULING_EVENTS = tuple(_SCHEDULING_EVENT_OF_ACTION.values())
_ENDING_STATUSES = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.TERMINATED, Status.CANCELED, Status.CONTINUED_AS_NEW}
)


@dataclass(frozen=True)
class Scheduled:
    """What the history records under one task id: the kind of its scheduling event, and whether
    its last attempt failed (a retry policy may then schedule the same task under the same id)."""

    kind: type
    failed: bool = False


_FAILURE_OF: dict[type, type] = {
    h.TaskFailed: h.TaskScheduled,
    h.SubOrchestrationInstanceFailed: h.SubOrchestrationInstanceCreated,
}


def scheduled_ids(events: Iterable[h.HistoryEvent]) -> dict[int, Scheduled]:
    table: dict[int, Scheduled] = {}
    for e in events:
        if isinstance(e, _SCHEDULING_EVENTS):
            table[e.event_id] = Scheduled(type(e))
        elif isinstance(e, (h.TaskFailed, h.SubOrchestrationInstanceFailed)):
            recorded = table.get(e.task_scheduled_id)
            if recorded is not None and recorded.kind is _FAILURE_OF[type(e)]:
                table[e.task_scheduled_id] = Scheduled(recorded.kind, failed=True)
    return table


def validate_orchestrator_actions(
    actions: list[h.OrchestratorAction], scheduled: dict[int, Scheduled]
) -> None:
    """Refuse (``INVALID_ARGUMENT``) actions that contradict the history the worker was given.

    A replaying worker re-creates the tasks its history records and only *new* ones become actions,
    so an action whose id the history already used for a task is a worker out of step with the
    instance (or a forged response), as is one id used twice in one response. The one exception
    is a retry: the official SDKs schedule a failed activity or sub-orchestration again under its
    first id.
    """
    seen: set[int] = set()
    for action in actions:
        event_kind = _SCHEDULING_EVENT_OF_ACTION.get(type(action))
        if event_kind is not None:
            recorded = scheduled.get(action.id)
            if recorded is not None and not (recorded.kind is event_kind and recorded.failed):
                what = (
                    "the same task again"
                    if recorded.kind is event_kind
                    else f"a {recorded.kind.__name__} there"
                )
                raise invalid(
                    f"{type(action).__name__} action id {action.id} contradicts the history, which records "
                    f"{what}: the worker's replay is out of step with the instance"
                )
            if action.id in seen:
                raise invalid(f"two actions of one response use task id {action.id}")
            seen.add(action.id)
        _validate_action_fields(action)


def _validate_action_fields(action: h.OrchestratorAction) -> None:
    if isinstance(action, (h.ScheduleTask, h.CreateSubOrchestration)) and not action.name:
        raise invalid(f"{type(action).__name__} action id {action.id} names no task")
    targeted = (h.CreateSubOrchestration, h.SendEvent, h.TerminateOrchestration)
    if isinstance(action, targeted) and not action.instance_id:
        raise invalid(f"{type(action).__name__} action id {action.id} names no target instance")
    if isinstance(action, h.SendEvent) and not action.name:
        raise invalid(f"SendEvent action id {action.id} names no event")
    if isinstance(action, h.CompleteOrchestration) and action.status not in _ENDING_STATUSES:
        raise invalid(
            f"CompleteOrchestration action id {action.id} has status {action.status.name}, "
            "which does not end an orchestration"
        )
    _validate_entity_targets(action)


def _validate_entity_targets(action: h.OrchestratorAction) -> None:
    """Entity messages go to entities ("@name@key"); sub-orchestrations and events never do."""
    if isinstance(action, h.SendEntityMessage):
        try:
            entities.validate_message(action.message)
        except ValueError as exc:
            raise invalid(f"SendEntityMessage action id {action.id}: {exc}") from None
    elif isinstance(action, (h.CreateSubOrchestration, h.SendEvent)) and entities.is_entity_id(
        action.instance_id
    ):
        raise invalid(
            f"{type(action).__name__} action id {action.id} targets {action.instance_id!r}: ids starting "
            "with '@' are reserved for durable entities (signal or call the entity instead)"
        )


def _validate_entity_outcome(outcome: entities.EntityBatchOutcome, item: EntityWorkItem) -> None:
    """Refuse (``INVALID_ARGUMENT``) a batch result that cannot answer the batch it completes."""
    if len(outcome.results) > len(item.operations):
        raise invalid(f"{len(outcome.results)} results answer a batch of {len(item.operations)} operations")
    for action in outcome.actions:
        if isinstance(action, entities.SignalEntityAction):
            try:
                entities.parse_entity_id(action.instance_id)
            except ValueError as exc:
                raise invalid(f"an operation of {item.instance_id!r} signals {exc}") from None
        elif entities.is_entity_id(action.instance_id):
            raise invalid(
                f"an operation of {item.instance_id!r} starts an orchestration with the entity id {action.instance_id!r}"
            )
        elif not action.name:
            raise invalid(f"an operation of {item.instance_id!r} starts an orchestration without a name")


# --- the dispatcher --------------------------------------------------------------------------


class Dispatcher:
    """Routes one hub's work items to its connected worker streams."""

    def __init__(self, backend: LocalBackend, settings: ServerSettings) -> None:
        self.backend = backend
        self.settings = settings
        self.streams: dict[str, WorkerStream] = {}
        self.in_flight: dict[str, InFlight] = {}
        self._token_of_instance: dict[str, str] = {}
        self._parked: list[_Parked] = []
        self._room: dict[Kind, asyncio.Event] = {kind: asyncio.Event() for kind in KINDS}
        self._pumps: list[asyncio.Task[None]] = []
        self._round_robin = itertools.count()
        self._last_lease_partial: dict[Kind, bool] = {kind: False for kind in KINDS}
        self._stopping = False
        #: histories of the instances in flight, kept from one episode to the next
        self.histories = HistoryCache(settings.history_cache_events)

    # --- streams ---------------------------------------------------------------------------

    def connect(self, request: Any) -> WorkerStream:
        if self._stopping:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        stream = WorkerStream(request, self.settings)
        self.streams[stream.id] = stream
        self._start_pumps()
        self._signal_room()
        log.info(
            "worker stream %s connected: up to %d orchestrations, %d activities and %d entity batches at once%s",
            stream.id[:8],
            stream.limits[ORCHESTRATION],
            stream.limits[ACTIVITY],
            stream.limits[ENTITY],
            ", with work-item filters" if request.HasField("workItemFilters") else "",
        )
        return stream

    async def disconnect(self, stream: WorkerStream) -> None:
        """The stream ended: its in-flight items go back to the queue for another worker."""
        stream.closed = True
        self.streams.pop(stream.id, None)
        if self._stopping:  # stop() settles what is in flight, after its drain
            return
        mine = [token for token, f in self.in_flight.items() if f.stream is stream]
        for token in mine:
            await self._hand_back(token)
        log.info("worker stream %s ended; %d unfinished work item(s) handed back", stream.id[:8], len(mine))

    def _signal_room(self, kind: Kind | None = None) -> None:
        for k in (kind,) if kind else KINDS:
            self._room[k].set()

    def _start_pumps(self) -> None:
        if not self._pumps:
            loop = asyncio.get_running_loop()
            self._pumps = [
                loop.create_task(self._pump(ORCHESTRATION), name="duratask-server-orchestrations"),
                loop.create_task(self._pump(ACTIVITY), name="duratask-server-activities"),
                loop.create_task(self._pump(ENTITY), name="duratask-server-entities"),
            ]

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop leasing and close every stream; results of items in flight are still taken for up
        to ``drain_seconds`` (a worker finishing an activity need not redo it elsewhere), then
        every unfinished item goes back to the queue."""
        self._stopping = True
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._pumps = []
        # Work leased along with completions and not handed out: back to the queue now.
        with contextlib.suppress(Exception):
            await self.backend.release_prefetched()
        for parked in self._parked:
            await self._abandon(parked.kind, parked.item)
        self._parked.clear()
        for stream in list(self.streams.values()):
            stream.closed = True
            stream.send(None)
        deadline = time.monotonic() + drain_seconds
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for token in list(self.in_flight):
            await self._hand_back(token)

    # --- leasing and routing ----------------------------------------------------------------

    async def _pump(self, kind: Kind) -> None:
        while True:
            try:
                await self._pump_once(kind)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("work-item pump (%s) failed; retrying", kind)
                await asyncio.sleep(0.5)

    async def _pump_once(self, kind: Kind) -> None:
        await self._retry_parked(kind)
        room = self._room[kind]
        room.clear()
        free = sum(s.free(kind) for s in self.streams.values())
        parked_here = sum(1 for p in self._parked if p.kind == kind)
        if free < self._low_water(kind) or parked_here >= self.settings.max_parked:
            await self._wait(room, self._park_wait())
            return
        limit = min(free, self.settings.lease_batch)
        if self._last_lease_partial[kind] and self.in_flight:
            # Busy: let finished work pile up for about one storage commit, then take it in one
            # lease (each lease is a storage transaction, queued with the completions).
            await asyncio.sleep(self.settings.lease_gather_seconds)
        items: list[Any] = await self._lease(kind, limit)
        if items:
            self._last_lease_partial[kind] = len(items) < limit
            await self._route_all(kind, items)
        if len(items) < limit:
            await self._wait_for_work(kind, room)

    async def _route_all(self, kind: Kind, items: list[Any]) -> None:
        if kind == ACTIVITY:  # everything needed is on the item
            for item in items:
                self._route(kind, item, item.name, item.version, {})
            return
        if kind == ENTITY:  # routed by entity name
            for item in items:
                self._route(kind, item, item.name, None, {})
            return
        histories = await self._histories_of(items)
        for item, history in zip(items, histories, strict=True):
            name, version, scheduled = self._describe(item, history)
            self._route(kind, item, name, version, scheduled, history)

    async def _wait_for_work(self, kind: Kind, room: asyncio.Event) -> None:
        """After a lease that found less than it could take: the storage has nothing more visible,
        so wait for new work. The backend's wait covers work committed since the lease began (its
        wake-up was armed then), due timers, and polling when other processes share the storage.
        Free room alone is no reason to lease again (each lease is a storage transaction, and an
        empty one right after a completion only finds the completion not yet committed), except
        for parked items, which room lets through."""
        timeout = self._park_wait() or 5.0
        if not any(p.kind == kind for p in self._parked):
            await self._backend_wait(kind, timeout)
            return
        work = asyncio.ensure_future(self._backend_wait(kind, timeout))
        try:
            await self._wait(room, None, also=(work,))
        finally:
            work.cancel()

    async def _lease(self, kind: Kind, limit: int) -> list[Any]:
        if kind == ORCHESTRATION:
            return list(await self.backend.lease_orchestrations(limit))
        if kind == ACTIVITY:
            return list(await self.backend.lease_activities(limit))
        return list(await self.backend.lease_entities(limit, self.settings.max_entity_batch))

    async def _backend_wait(self, kind: Kind, timeout: float) -> None:
        if kind == ENTITY:
            await self.backend.wait_for_entity_work(timeout)
        else:
            await self.backend.wait_for_work(
                "orchestration" if kind == ORCHESTRATION else "activity", timeout
            )
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # asyncio.wait_for (in the notifier's wait) returns normally when its future completes
            # just as it is cancelled: end here anyway, or a pump that is being stopped runs on.
            raise asyncio.CancelledError

    def _low_water(self, kind: Kind) -> int:
        """Free slots worth a lease. While workers hold a good part of their limit they have work
        queued anyway, so the next lease waits until a batch of slots is free: fewer, larger
        leases leave the storage to the completions. With little in flight, one slot is enough."""
        busy = sum(s.busy[kind] for s in self.streams.values())
        limit = sum(s.limits[kind] for s in self.streams.values())
        if busy * 4 < limit:
            return 1
        return max(1, min(self.settings.lease_batch, limit // 10))

    def _describe(
        self, item: OrchestrationWorkItem, history: History
    ) -> tuple[str, str | None, dict[int, Scheduled]]:
        """Name and version to route an orchestration item by; its full history goes into it."""
        item.history = history.events
        started = next(
            (
                e
                for e in itertools.chain(history.events, item.new_events)
                if isinstance(e, h.ExecutionStarted)
            ),
            None,
        )
        version = started.version if started is not None else None
        return item.name, version, scheduled_ids(history.events)

    async def _histories_of(self, items: list[OrchestrationWorkItem]) -> list[History]:
        """Each item's stored history: none for a first episode, the one kept since the instance's
        last episode here if it is still exact (``history_cache``), else read from the storage
        (the reads queued together)."""
        histories = [self._known_history(item) for item in items]
        missing = [i for i, history in enumerate(histories) if history is None]
        # Straight from the storage: one read, not the backend's check-then-read (the instance
        # exists: it is leased and running, and only finished instances are purged).
        read = await asyncio.gather(
            *(self.backend.storage.get_history(items[i].instance_id) for i in missing)
        )
        for i, events in zip(missing, read, strict=True):
            histories[i] = History(items[i].execution_id, events)
        return [history for history in histories if history is not None]

    def _known_history(self, item: OrchestrationWorkItem) -> History | None:
        if item.history is not None:  # the backend attached it
            return History(item.execution_id, item.history)
        if item.history_length == 0:
            return History(item.execution_id, [])
        return self.histories.take(item.instance_id, item.execution_id, item.history_length)

    def _route(
        self,
        kind: Kind,
        item: Any,
        name: str,
        version: str | None,
        scheduled: dict[int, Scheduled],
        history: History | None = None,
    ) -> None:
        stream = self._pick(kind, name, version)
        if stream is None:
            deadline = time.monotonic() + self.settings.park_seconds
            self._parked.append(_Parked(kind, item, name, version, deadline, history))
            return
        self._send(kind, item, stream, scheduled, history)

    def _pick(self, kind: Kind, name: str, version: str | None) -> WorkerStream | None:
        candidates = [s for s in self.streams.values() if s.free(kind) > 0 and s.accepts(kind, name, version)]
        if not candidates:
            return None
        most_room = max(s.free(kind) for s in candidates)
        roomy = [s for s in candidates if s.free(kind) == most_room]
        return roomy[next(self._round_robin) % len(roomy)]

    def _send(
        self,
        kind: Kind,
        item: Any,
        stream: WorkerStream,
        scheduled: dict[int, Scheduled],
        history: History | None = None,
    ) -> None:
        if kind in _ONE_PER_INSTANCE:
            # One orchestration (or entity) item per instance in flight: a newer lease supersedes
            # an older one (whose lease expired), and the older token goes stale.
            older = self._token_of_instance.pop(item.instance_id, None)
            if older is not None:
                self._forget(older)
            self._token_of_instance[item.instance_id] = item.token
        if kind == ORCHESTRATION:
            message = _orchestration_message(item, history)
        elif kind == ENTITY:
            message = convert.entity_work_item_to_pb(item, v2=self.settings.entity_request_v2)
        else:
            message = convert.activity_work_item_to_pb(item)
        stream.busy[kind] += 1
        self.in_flight[item.token] = InFlight(kind, item, stream, scheduled, history)
        stream.send(message)

    async def _retry_parked(self, kind: Kind) -> None:
        if not self._parked:
            return
        now = time.monotonic()
        keep: list[_Parked] = []
        for parked in self._parked:
            if parked.kind != kind:
                keep.append(parked)
                continue
            stream = self._pick(kind, parked.name, parked.version)
            if stream is not None:
                item = parked.item
                history = item.history if isinstance(item, OrchestrationWorkItem) else None
                scheduled = scheduled_ids(history or [])
                self._send(kind, parked.item, stream, scheduled, parked.history)
            elif parked.deadline <= now:
                await self._abandon(kind, parked.item)
            else:
                keep.append(parked)
        self._parked = keep

    def _park_wait(self) -> float | None:
        if not self._parked:
            return None
        return max(0.0, min(p.deadline for p in self._parked) - time.monotonic())

    @staticmethod
    async def _wait(
        event: asyncio.Event, timeout: float | None, also: Iterable[asyncio.Future[Any]] = ()
    ) -> None:
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, *also}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    # --- settling ---------------------------------------------------------------------------

    def take(self, token: str, kind: Kind) -> InFlight:
        """The in-flight item of ``token`` (still in flight); ``NOT_FOUND`` for unknown or stale tokens."""
        flight = self.in_flight.get(token)
        if flight is None or flight.kind != kind:
            raise not_found(
                f"no {kind} work item is in flight with completion token {token!r}: it is unknown, "
                "already completed or abandoned, or its lease passed to another worker"
            )
        return flight

    def _forget(self, token: str) -> InFlight | None:
        flight = self.in_flight.pop(token, None)
        if flight is None:
            return None
        flight.stream.busy[flight.kind] -= 1
        if flight.kind in _ONE_PER_INSTANCE:
            instance_id = flight.item.instance_id
            if self._token_of_instance.get(instance_id) == token:
                del self._token_of_instance[instance_id]
        self._signal_room(flight.kind)
        return flight

    async def complete_orchestration(self, response: Any) -> bool:
        """Apply a worker's ``OrchestratorResponse``; ``False`` if the lease was lost meanwhile."""
        token = response.completionToken
        flight = self.take(token, ORCHESTRATION)
        item = flight.item
        assert isinstance(item, OrchestrationWorkItem)
        with self._refusal_hands_back(token):
            if response.instanceId and response.instanceId != item.instance_id:
                raise invalid(
                    f"completion token {token!r} belongs to instance {item.instance_id!r}, "
                    f"not {response.instanceId!r}"
                )
            if response.isPartial:
                raise invalid(
                    "chunked orchestrator responses (isPartial) are not supported: send one response"
                )
            result = convert.orchestration_result_from_pb(response)
            validate_orchestrator_actions(result.actions, flight.scheduled)
        self._forget(token)
        # The activities this episode schedules are leased in the same transaction, as far as
        # workers have room: the activity pump finds them without another trip to the storage.
        room = self._room_for(ACTIVITY)
        ((applied, commit),) = await self.backend.commit_episodes([(item, result)], lease_activities=room)
        if applied:
            self._keep_history(flight, commit)
        if room:
            await _let_pumps_send()
        return applied

    def _keep_history(self, flight: InFlight, commit: OrchestrationCommit) -> None:
        """Keep the instance's history as the commit left it, for its next episode."""
        instance = commit.instance
        before = flight.history
        if instance.status.is_terminal or before is None:
            self.histories.forget(instance.instance_id)
        elif commit.reset_history or before.execution_id == instance.execution_id:
            after = before.after_commit(instance.execution_id, commit.history_append, commit.reset_history)
            self.histories.keep(instance.instance_id, after)

    async def complete_activity(self, response: Any) -> bool:
        """Apply a worker's ``ActivityResponse``; ``False`` if the lease was lost meanwhile."""
        token = response.completionToken
        flight = self.take(token, ACTIVITY)
        item = flight.item
        assert isinstance(item, ActivityWorkItem)
        with self._refusal_hands_back(token):
            if response.instanceId and response.instanceId != item.instance_id:
                raise invalid(
                    f"completion token {token!r} belongs to instance {item.instance_id!r}, "
                    f"not {response.instanceId!r}"
                )
            if response.taskId != item.task_id:
                raise invalid(
                    f"completion token {token!r} belongs to task {item.task_id} of {item.instance_id!r}, "
                    f"not to task {response.taskId}"
                )
            outcome = convert.activity_outcome_from_pb(response, utcnow())
        self._forget(token)
        # Likewise the orchestration step this result makes ready, for the orchestration pump.
        room = self._room_for(ORCHESTRATION)
        (applied,) = await self.backend.complete_activities([(item, outcome)], lease_orchestrations=room)
        if room:
            await _let_pumps_send()
        return applied

    def _room_for(self, kind: Kind) -> int:
        """How many items of ``kind`` a completion may lease along (the workers' free slots, less
        what is parked; the backend counts what it holds already)."""
        if self._stopping:
            return 0
        free = sum(s.free(kind) for s in self.streams.values())
        parked = sum(1 for p in self._parked if p.kind == kind) if self._parked else 0
        return max(0, min(free - parked, self.settings.lease_batch))

    async def complete_entity(self, result: Any) -> bool:
        """Apply a worker's ``EntityBatchResult``; ``False`` if the lease was lost meanwhile."""
        token = result.completionToken
        flight = self.take(token, ENTITY)
        item = flight.item
        assert isinstance(item, EntityWorkItem)
        with self._refusal_hands_back(token):
            outcome = convert.entity_batch_result_from_pb(result)
            _validate_entity_outcome(outcome, item)
        self._forget(token)
        (applied,) = await self.backend.complete_entities([(item, outcome)])
        return applied

    @contextlib.contextmanager
    def _refusal_hands_back(self, token: str) -> Iterator[None]:
        """A refused completion leaves stored state alone; the item stays leased for
        ``refused_hand_back_seconds`` (the worker may still send a valid completion) and then goes
        back to the queue, so a worker out of step does not spin on it."""
        try:
            yield
        except ValueError as exc:  # conversion errors, refusals (RpcError is not a ValueError)
            self._hand_back_later(token)
            raise invalid(f"invalid completion for token {token!r}: {exc}") from exc
        except RpcError:
            self._hand_back_later(token)
            raise

    async def abandon(self, token: str, kind: Kind) -> None:
        self.take(token, kind)
        await self._hand_back(token)

    def _hand_back_later(self, token: str) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(
            self.settings.refused_hand_back_seconds, lambda: loop.create_task(self._hand_back(token))
        )

    async def _hand_back(self, token: str) -> None:
        flight = self._forget(token)
        if flight is not None:
            if flight.history is not None:  # unchanged: good for whoever gets the item next
                self.histories.keep(flight.item.instance_id, flight.history)
            await self._abandon(flight.kind, flight.item)

    async def _abandon(self, kind: Kind, item: Any) -> None:
        abandons: dict[Kind, Callable[[Any], Any]] = {
            ORCHESTRATION: self.backend.abandon_orchestration,
            ACTIVITY: self.backend.abandon_activity,
            ENTITY: self.backend.abandon_entity,
        }
        abandon = abandons[kind]
        with contextlib.suppress(Exception):  # a lost lease needs no hand-back
            await abandon(item)


async def _let_pumps_send() -> None:
    """One turn of the event loop before a completion is answered: the pump that the backend woke
    with the work leased along routes it first, so the next step goes out ahead of the answer
    (about 0.4 ms sooner per step one instance at a time; the answer only unblocks the worker)."""
    await asyncio.sleep(0)


def _orchestration_message(item: OrchestrationWorkItem, history: History | None) -> Any:
    """The item's ``WorkItem``; with ``history``, its events' protocol messages are reused."""
    if history is None:
        return convert.orchestration_work_item_to_pb(item)
    message = convert.orchestration_work_item_to_pb(msgspec.structs.replace(item, history=[]))
    message.orchestratorRequest.pastEvents.extend(history.protocol_messages())
    return message
