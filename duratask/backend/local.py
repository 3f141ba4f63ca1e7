"""``LocalBackend``: the Backend API over a Storage, owning every decision.

The client, the worker, the CLI, the dashboard and the gRPC server all end up here. Decisions
about one episode live in the pure ``runtime_state``; this module adds what needs I/O: validation
against stored state, leases (with renewal while work is held in this process), wake-ups, paging.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import TypeVar

import msgspec

from .. import history as h
from ..errors import (
    InstanceStateError,
    InvalidInstanceIdError,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    PayloadTooLargeError,
)
from ..models import (
    OrchestrationMetadata,
    OrchestrationQuery,
    OrchestrationQueryResult,
    PurgeInstancesFilter,
    TaskFailureDetails,
)
from ..models import OrchestrationRuntimeStatus as Status
from ..notify import ACTIVITIES, ENTITIES, ORCHESTRATIONS, instance_topic
from ..storage.base import (
    ActivityCompletion,
    ActivityLease,
    InboxMessage,
    InstanceFilter,
    InstanceRecord,
    NewInstance,
    OrchestrationCommit,
    OrchestrationLease,
    PageCursor,
    Storage,
    commit_then_lease_activities,
    complete_then_lease_orchestrations,
)
from . import entities, rewind, runtime_state
from .api import ActivityWorkItem, OrchestrationResult, OrchestrationWorkItem, WaitUntil, WorkKind

log = logging.getLogger("duratask.backend")

T = TypeVar("T")

MAX_INSTANCE_ID_LENGTH = 256
#: The longest safety-net poll of a client waiting on an instance when the storage relays every
#: process's commits (SQLite's ``data_version`` watch, PostgreSQL's LISTEN): a notification lost
#: to a bug would delay a waiter by this much at most.
WATCHED_POLL_CAP_SECONDS = 8.0
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class BackendOptions:
    """Tunables of an embedded backend (set through the connection string's query parameters)."""

    #: Largest accepted payload (input, output, event data, custom status), in bytes of UTF-8 JSON.
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    #: How long a worker holds a work item before it may go to another worker (renewed while held).
    lease_seconds: float = 30.0
    #: Longest sleep between polls when other processes may add work (SQLite file, safety net).
    max_poll_seconds: float = 1.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def validate_instance_id(instance_id: str) -> None:
    if not isinstance(instance_id, str) or not instance_id.strip():
        raise InvalidInstanceIdError("instance id must be a non-empty string")
    if len(instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise InvalidInstanceIdError(
            f"instance id is {len(instance_id)} characters, over the limit of {MAX_INSTANCE_ID_LENGTH}"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in instance_id):
        raise InvalidInstanceIdError("instance id must not contain control characters")


def to_metadata(record: InstanceRecord, with_payloads: bool) -> OrchestrationMetadata:
    return OrchestrationMetadata(
        instance_id=record.instance_id,
        name=record.name,
        runtime_status=record.status,
        created_at=record.created_at,
        last_updated_at=record.last_updated_at,
        serialized_input=record.input if with_payloads else None,
        serialized_output=record.output if with_payloads else None,
        serialized_custom_status=record.custom_status if with_payloads else None,
        failure_details=record.failure,
        parent_instance_id=record.parent_instance_id,
    )


def encode_cursor(cursor: PageCursor) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(cursor)).decode()


def decode_cursor(token: str) -> PageCursor:
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(token.encode()), type=PageCursor)
    except Exception as exc:  # any garbage in an opaque token is the caller's mistake
        raise ValueError(f"invalid continuation token {token!r}") from exc


class LocalBackend:
    """The Backend API (``backend.api.Backend``) over one Storage."""

    def __init__(self, storage: Storage, options: BackendOptions | None = None) -> None:
        self.storage = storage
        self.options = options or BackendOptions()
        # Leases handed out by this process and not yet settled: token -> lease.
        self._orchestration_leases: dict[str, OrchestrationLease] = {}
        self._activity_leases: dict[str, int] = {}
        self._renewer: asyncio.Task[None] | None = None
        # A wake-up armed when a lease starts looking, so work that arrives while it looks is not
        # missed by the ``wait_for_work`` that follows an empty lease.
        self._armed: dict[WorkKind, asyncio.Future[None]] = {}
        #: Kinds whose last lease took as many as it was allowed: the storage may hold more.
        self._lease_was_full: set[WorkKind] = set()
        # Work leased along with a completion (``complete_*(..., lease_*=N)``), handed out first by
        # the next ``lease_*``; and the futures ``wait_for_work`` sleeps on, woken when some comes.
        self._prefetched_orchestrations: deque[OrchestrationLease] = deque()
        self._prefetched_activities: deque[ActivityLease] = deque()
        self._waiting: dict[WorkKind, set[asyncio.Future[None]]] = {"orchestration": set(), "activity": set()}
        # Entity leases handed out by this process (token -> what the lease decided), and the
        # entity pump's armed wake-up (see "durable entities" below).
        self._entity_leases: dict[str, entities.EntityPlan] = {}
        self._entity_armed: asyncio.Future[None] | None = None
        # A storage that tells entity messages apart lets the entity pump sleep through every
        # orchestration's traffic; any other wakes it for all of it (a lease finds out).
        self._entity_topic = ENTITIES if getattr(storage, "notifies_entities", False) else ORCHESTRATIONS

    async def close(self) -> None:
        await self.release_prefetched()
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for armed in self._armed.values():
            self.storage.notifier.unregister(armed)
        self._armed.clear()
        if self._entity_armed is not None:
            self.storage.notifier.unregister(self._entity_armed)
            self._entity_armed = None
        await self.storage.close()

    # --- payload limits -----------------------------------------------------------------------

    def check_payload(self, what: str, payload: str | None) -> None:
        if payload is None:
            return
        size = (
            len(payload.encode("utf-8"))
            if len(payload) * 4 > self.options.max_payload_bytes
            else len(payload)
        )
        if size > self.options.max_payload_bytes:
            raise PayloadTooLargeError(what, size, self.options.max_payload_bytes)

    def _oversized(self, what: str, payload: str | None) -> TaskFailureDetails | None:
        try:
            self.check_payload(what, payload)
        except PayloadTooLargeError as exc:
            return TaskFailureDetails(error_type="duratask.PayloadTooLargeError", error_message=str(exc))
        return None

    # --- client side ----------------------------------------------------------------------------

    async def start_orchestration(
        self,
        name: str,
        instance_id: str,
        input: str | None,
        *,
        start_at: datetime | None = None,
        version: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        validate_instance_id(instance_id)
        if entities.is_entity_id(instance_id):
            raise InvalidInstanceIdError(
                f"instance id {instance_id!r}: ids starting with '@' are reserved for durable entities"
            )
        if not name:
            raise ValueError("orchestrator name must be a non-empty string")
        self.check_payload("orchestration input", input)
        now = utcnow()
        if start_at is not None and start_at.tzinfo is None:
            start_at = start_at.replace(tzinfo=UTC)
        visible_at = start_at if start_at is not None and start_at > now else now
        execution_id = runtime_state.new_execution_id()
        record = InstanceRecord(
            instance_id=instance_id,
            name=name,
            execution_id=execution_id,
            status=Status.PENDING,
            created_at=now,
            last_updated_at=now,
            input=input,
            version=version,
            scheduled_start=start_at,
        )
        started = h.ExecutionStarted(
            timestamp=now,
            name=name,
            instance_id=instance_id,
            execution_id=execution_id,
            input=input,
            version=version,
            scheduled_start=start_at,
            tags=tags,
        )
        await self.storage.create_instance(NewInstance(record=record, started=started, visible_at=visible_at))
        return instance_id

    async def get_instance(self, instance_id: str, with_payloads: bool) -> OrchestrationMetadata | None:
        record = await self.storage.get_instance(instance_id)
        return None if record is None else to_metadata(record, with_payloads)

    async def _require(self, instance_id: str) -> InstanceRecord:
        record = await self.storage.get_instance(instance_id)
        if record is None:
            raise OrchestrationNotFoundError(instance_id)
        return record

    async def wait_for_instance(
        self, instance_id: str, until: WaitUntil, with_payloads: bool, timeout: float | None
    ) -> OrchestrationMetadata | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        # A storage that wakes waiters for other processes' commits too needs polling only as a
        # safety net, and a slow one: a server with 2,000 clients waiting would otherwise read
        # 2,000 instances a second for nothing. Any other may miss another process finishing the
        # instance, and polls from 10 ms up.
        watched = getattr(self.storage, "watches_other_processes", False)
        poll = self.options.max_poll_seconds if watched else 0.01
        longest_poll = max(WATCHED_POLL_CAP_SECONDS, poll) if watched else self.options.max_poll_seconds
        topic = instance_topic(instance_id)
        while True:
            woke = self.storage.notifier.register(topic)
            record = await self.storage.get_instance(instance_id)
            if record is None or _reached(record.status, until):
                self.storage.notifier.unregister(woke)
                return None if record is None else to_metadata(record, with_payloads)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self.storage.notifier.unregister(woke)
                raise TimeoutError(f"instance {instance_id!r} did not reach {until} within {timeout} s")
            wait = remaining
            if self.storage.shared_across_processes:  # another process may finish it: poll too
                wait = poll if wait is None else min(wait, poll)
                poll = min(poll * 2, longest_poll)
            await self.storage.notifier.wait(woke, wait)

    async def query_instances(self, query: OrchestrationQuery) -> OrchestrationQueryResult:
        if query.page_size <= 0:
            raise ValueError("page_size must be positive")
        hubs = query.task_hub_names
        if hubs is not None and getattr(self.storage, "taskhub", "default") not in hubs:
            return OrchestrationQueryResult(instances=[], continuation_token=None)
        after = decode_cursor(query.continuation_token) if query.continuation_token else None
        filter = InstanceFilter(
            statuses=list(query.runtime_status) if query.runtime_status else None,
            created_from=query.created_from,
            created_to=query.created_to,
            instance_id_prefix=query.instance_id_prefix or None,
        )
        rows = await self.storage.query_instances(filter, query.page_size + 1, after)
        page, more = rows[: query.page_size], len(rows) > query.page_size
        token = encode_cursor(PageCursor(page[-1].created_at, page[-1].instance_id)) if more else None
        # Entities are instances too (ids "@name@key"), but not orchestrations: a page may come out short.
        return OrchestrationQueryResult(
            instances=[to_metadata(r, True) for r in page if not entities.is_entity_id(r.instance_id)],
            continuation_token=token,
        )

    async def raise_event(self, instance_id: str, name: str, data: str | None) -> None:
        if not name:
            raise ValueError("event name must be a non-empty string")
        self.check_payload("event data", data)
        record = await self._require(instance_id)
        if record.status.is_terminal:
            raise InstanceStateError(
                f"cannot raise event {name!r}: instance {instance_id!r} is {record.status.name}"
            )
        await self._deliver(record, h.EventRaised(timestamp=utcnow(), name=name, input=data))

    async def _deliver(self, record: InstanceRecord, event: h.HistoryEvent) -> None:
        """Queue an event; for an instance whose scheduled start is ahead, it waits for the start."""
        now = utcnow()
        visible_at = now
        if record.status is Status.PENDING and record.scheduled_start and record.scheduled_start > now:
            visible_at = record.scheduled_start
        await self.storage.enqueue(
            [InboxMessage(instance_id=record.instance_id, event=event, visible_at=visible_at)]
        )

    async def terminate(self, instance_id: str, output: str | None, recursive: bool) -> None:
        self.check_payload("termination output", output)
        record = await self._require(instance_id)
        if record.status.is_terminal:
            return
        targets = [instance_id]
        if recursive:
            targets += await self._descendants(instance_id)
        now = utcnow()
        event = h.ExecutionTerminated(timestamp=now, input=output, recurse=recursive)
        await self.storage.enqueue(
            [InboxMessage(instance_id=t, event=event, visible_at=now) for t in targets]
        )

    async def _descendants(self, instance_id: str) -> list[str]:
        found: list[str] = []
        frontier = [instance_id]
        while frontier:
            children = [c for parent in frontier for c in await self.storage.child_instance_ids(parent)]
            found += children
            frontier = children
        return found

    async def suspend(self, instance_id: str, reason: str | None) -> None:
        record = await self._require(instance_id)
        if record.status.is_terminal:
            raise InstanceStateError(f"cannot suspend instance {instance_id!r}: it is {record.status.name}")
        await self._deliver(record, h.ExecutionSuspended(timestamp=utcnow(), input=reason))

    async def resume(self, instance_id: str, reason: str | None) -> None:
        record = await self._require(instance_id)
        if record.status.is_terminal:
            raise InstanceStateError(f"cannot resume instance {instance_id!r}: it is {record.status.name}")
        await self._deliver(record, h.ExecutionResumed(timestamp=utcnow(), input=reason))

    async def purge(self, instance_id: str, recursive: bool) -> int:
        record = await self._require(instance_id)
        if not record.status.is_terminal:
            raise InstanceStateError(
                f"cannot purge instance {instance_id!r}: it is {record.status.name}; terminate it first"
            )
        ids = [instance_id] + (await self._descendants(instance_id) if recursive else [])
        return await self.storage.delete_instances(ids)

    async def purge_matching(self, filter: PurgeInstancesFilter) -> int:
        return await self.storage.delete_instances_matching(
            InstanceFilter(
                statuses=list(filter.runtime_status) if filter.runtime_status else None,
                created_from=filter.created_from,
                created_to=filter.created_to,
            )
        )

    async def get_history(self, instance_id: str) -> list[h.HistoryEvent]:
        await self._require(instance_id)
        return await self.storage.get_history(instance_id)

    # --- orchestration work items -------------------------------------------------------------

    def _arm(self, kind: WorkKind) -> None:
        armed = self._armed.get(kind)
        if armed is None or armed.done():
            self._armed[kind] = self.storage.notifier.register(_TOPICS[kind])

    async def lease_orchestrations(self, limit: int) -> list[OrchestrationWorkItem]:
        leases = _take(self._prefetched_orchestrations, limit)
        if not leases:
            self._arm("orchestration")
            leases = await self.storage.lease_orchestrations(
                limit, self.options.lease_seconds, exclude_id_prefix=entities.ENTITY_ID_PREFIX
            )
            self._note_fullness("orchestration", len(leases), limit)
        items: list[OrchestrationWorkItem] = []
        settle: list[OrchestrationCommit] = []
        now = utcnow()
        for lease in leases:
            commit = await self._plan_rewind_if_requested(lease, now) or self._settle_without_worker(
                lease, now
            )
            if commit is not None:
                settle.append(commit)
                continue
            self._orchestration_leases[lease.token] = lease
            items.append(
                OrchestrationWorkItem(
                    instance_id=lease.instance.instance_id,
                    execution_id=lease.instance.execution_id,
                    name=lease.instance.name,
                    token=lease.token,
                    new_events=[h.OrchestratorStarted(timestamp=now), *_start_first(lease)],
                    history_length=lease.history_length,
                )
            )
        if items:
            self._ensure_renewer()
        if settle:
            await self.storage.commit_orchestrations(settle)
        return items

    def _settle_without_worker(self, lease: OrchestrationLease, now: datetime) -> OrchestrationCommit | None:
        """Leases the backend settles itself: messages to finished instances, terminating one that never ran."""
        instance = lease.instance
        if instance.status.is_terminal:
            return runtime_state.plan_discard(instance, lease.token)
        if lease.history_length == 0 and not any(isinstance(e, h.ExecutionStarted) for e in lease.new_events):
            terminated = next((e for e in lease.new_events if isinstance(e, h.ExecutionTerminated)), None)
            if terminated is not None:
                return runtime_state.plan_terminate_unstarted(instance, lease.token, terminated, now)
        return None

    async def complete_orchestrations(
        self, done: list[tuple[OrchestrationWorkItem, OrchestrationResult]], *, lease_activities: int = 0
    ) -> list[bool]:
        return [applied for applied, _ in await self.commit_episodes(done, lease_activities=lease_activities)]

    async def commit_episodes(
        self, done: list[tuple[OrchestrationWorkItem, OrchestrationResult]], *, lease_activities: int = 0
    ) -> list[tuple[bool, OrchestrationCommit]]:
        """``complete_orchestrations``, also returning each episode's commit (what it appended to
        the history): ``duratask serve`` keeps the histories of the instances it runs from them."""
        now = utcnow()
        commits: list[OrchestrationCommit] = []
        for item, result in done:
            lease = self._orchestration_leases.pop(item.token, None)
            if lease is None:
                commits.append(_fenced_out(item))
                continue
            result = self._enforce_payload_limits(result)
            commit = entities.plan_episode(
                lease.instance, item.token, item.new_events, result.actions, result.custom_status, now
            )
            commits.append(commit)
        await self._refuse_clashing_sub_orchestrations(commits)
        await self._terminate_children_of_terminated(commits, done)
        room = lease_activities - len(self._prefetched_activities)
        if room <= 0:
            applied = await self.storage.commit_orchestrations(commits)
        else:
            self._arm("activity")
            applied, leases = await commit_then_lease_activities(
                self.storage, commits, room, self.options.lease_seconds
            )
            self._note_fullness("activity", len(leases), room)
            self._hold_activity_leases(leases)
            if leases:
                self._prefetched_activities.extend(leases)
                self._wake("activity")
        return list(zip(applied, commits, strict=True))

    def _enforce_payload_limits(self, result: OrchestrationResult) -> OrchestrationResult:
        """An oversized payload (or custom status) fails the instance instead of being stored."""
        failure = self._oversized("custom status", result.custom_status)
        for action in result.actions:
            failure = failure or self._oversized(f"{type(action).__name__} payload", _payload_of(action))
        if failure is None:
            return result
        return OrchestrationResult(
            actions=[h.CompleteOrchestration(id=-1, status=Status.FAILED, failure=failure)],
            custom_status=None,
        )

    async def _refuse_clashing_sub_orchestrations(self, commits: list[OrchestrationCommit]) -> None:
        """A sub-orchestration whose id an unfinished instance holds fails in its parent at once,
        instead of leaving the parent waiting for a child that was never created."""
        for commit in commits:
            for new in list(commit.new_instances):
                if entities.is_entity_id(new.record.instance_id):
                    continue  # an entity messaged for the first time: created unless it exists
                existing = await self.storage.get_instance(new.record.instance_id)
                if existing is None or existing.status.is_terminal:
                    continue
                commit.new_instances.remove(new)
                failure = TaskFailureDetails(
                    error_type="duratask.OrchestrationAlreadyExistsError",
                    error_message=f"cannot start sub-orchestration {new.record.instance_id!r}: "
                    f"an instance with that id is {existing.status.name}",
                )
                task_id = new.record.parent_task_id
                refused = h.SubOrchestrationInstanceFailed(
                    timestamp=new.visible_at,
                    task_scheduled_id=-1 if task_id is None else task_id,
                    failure=failure,
                )
                commit.messages.append(
                    InboxMessage(
                        instance_id=commit.instance.instance_id, event=refused, visible_at=new.visible_at
                    )
                )

    async def _terminate_children_of_terminated(
        self,
        commits: list[OrchestrationCommit],
        done: list[tuple[OrchestrationWorkItem, OrchestrationResult]],
    ) -> None:
        """A recursive termination reaches sub-orchestrations started after the terminate request."""
        for commit, (item, _) in zip(commits, done):
            term = next((e for e in item.new_events if isinstance(e, h.ExecutionTerminated)), None)
            if term is None or not term.recurse or commit.instance.status is not Status.TERMINATED:
                continue
            for child in await self.storage.child_instance_ids(item.instance_id):
                commit.messages.append(
                    InboxMessage(instance_id=child, event=term, visible_at=commit.instance.last_updated_at)
                )

    async def abandon_orchestration(self, item: OrchestrationWorkItem) -> None:
        self._orchestration_leases.pop(item.token, None)
        await self.storage.abandon_orchestration(item.instance_id, item.token)

    # --- activity work items -----------------------------------------------------------------

    async def lease_activities(self, limit: int) -> list[ActivityWorkItem]:
        leases = _take(self._prefetched_activities, limit)
        if not leases:
            self._arm("activity")
            leases = await self.storage.lease_activities(limit, self.options.lease_seconds)
            self._note_fullness("activity", len(leases), limit)
            self._hold_activity_leases(leases)
        return [
            ActivityWorkItem(
                instance_id=lease.task.instance_id,
                execution_id=lease.task.execution_id,
                task_id=lease.task.task_id,
                name=lease.task.name,
                input=lease.task.input,
                token=lease.token,
                attempt=lease.attempt,
                version=lease.task.version,
            )
            for lease in leases
        ]

    def _hold_activity_leases(self, leases: list[ActivityLease]) -> None:
        """Renew these leases while this process holds them."""
        for lease in leases:
            self._activity_leases[lease.token] = lease.activity_id
        if leases:
            self._ensure_renewer()

    async def complete_activities(
        self, done: list[tuple[ActivityWorkItem, h.TaskCompleted | h.TaskFailed]], *, lease_orchestrations: int = 0
    ) -> list[bool]:
        completions = []
        for item, event in done:
            activity_id = self._activity_leases.pop(item.token, None)
            if activity_id is None:
                activity_id = -1  # not leased here: storage fences it out
            if isinstance(event, h.TaskCompleted):
                failure = self._oversized("activity result", event.result)
                if failure is not None:
                    event = h.TaskFailed(
                        timestamp=event.timestamp, task_scheduled_id=event.task_scheduled_id, failure=failure
                    )
            completions.append(
                ActivityCompletion(
                    activity_id=activity_id,
                    token=item.token,
                    instance_id=item.instance_id,
                    execution_id=item.execution_id,
                    event=event,
                )
            )
        room = lease_orchestrations - len(self._prefetched_orchestrations)
        if room <= 0:
            return await self.storage.complete_activities(completions)
        self._arm("orchestration")
        applied, leases = await complete_then_lease_orchestrations(
            self.storage,
            completions,
            room,
            self.options.lease_seconds,
            exclude_id_prefix=entities.ENTITY_ID_PREFIX,
        )
        self._note_fullness("orchestration", len(leases), room)
        if leases:
            self._prefetched_orchestrations.extend(leases)
            self._ensure_renewer()
            self._wake("orchestration")
        return applied

    async def release_prefetched(self) -> None:
        """Hand back the work leased along with completions and not taken yet (at shutdown)."""
        while self._prefetched_orchestrations:
            lease = self._prefetched_orchestrations.popleft()
            with contextlib.suppress(Exception):
                await self.storage.abandon_orchestration(lease.instance.instance_id, lease.token)
        while self._prefetched_activities:
            activity = self._prefetched_activities.popleft()
            self._activity_leases.pop(activity.token, None)
            with contextlib.suppress(Exception):
                await self.storage.abandon_activity(activity.activity_id, activity.token)

    async def abandon_activity(self, item: ActivityWorkItem) -> None:
        activity_id = self._activity_leases.pop(item.token, None)
        if activity_id is not None:
            await self.storage.abandon_activity(activity_id, item.token)

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        """Keep the leases of work this process holds alive (activities that run long, episodes that
        wait for a busy worker or a long replay, prefetched work); a dead process stops renewing."""
        while self._activity_leases or self._orchestration_leases or self._prefetched_orchestrations:
            await asyncio.sleep(self.options.lease_seconds / 3)
            seconds = self.options.lease_seconds
            for token, activity_id in list(self._activity_leases.items()):
                if not await self.storage.renew_activity_lease(activity_id, token, seconds):
                    self._activity_leases.pop(token, None)
            for token, lease in list(self._orchestration_leases.items()):
                if not await self.storage.renew_orchestration_lease(lease.instance.instance_id, token, seconds):
                    self._orchestration_leases.pop(token, None)  # its commit is fenced out anyway
            prefetched = self._prefetched_orchestrations
            for lease in list(prefetched):
                held = await self.storage.renew_orchestration_lease(lease.instance.instance_id, lease.token, seconds)
                if not held and lease in prefetched:
                    prefetched.remove(lease)  # another worker has it now: do not run it here too

    # --- restart and rewind (used by the gRPC server's RestartInstance / RewindInstance) ----------

    async def restart(self, instance_id: str, with_new_instance_id: bool) -> str:
        """Start the instance's orchestrator again with its original input; returns the id used.

        With the same id the instance must be terminal (``InstanceStateError`` if not);
        with ``with_new_instance_id`` a fresh id is generated and the original is left as it is.
        (Like the Durable Task Scheduler: the input of the current execution, which after a
        continue-as-new is the latest one.)
        """
        record = await self._require(instance_id)
        if not with_new_instance_id and not record.status.is_terminal:
            raise InstanceStateError(
                f"cannot restart instance {instance_id!r} under its own id: it is {record.status.name}"
            )
        target = uuid.uuid4().hex if with_new_instance_id else instance_id
        return await self.start_orchestration(record.name, target, record.input, version=record.version)

    async def rewind(self, instance_id: str, reason: str | None) -> None:
        """Queue the rewind of a FAILED instance (``backend.rewind`` says what it does); returns at once."""
        record = await self._require(instance_id)
        if record.status is not Status.FAILED:
            raise InstanceStateError(
                f"cannot rewind instance {instance_id!r}: it is {record.status.name}; only FAILED instances rewind"
            )
        event = h.ExecutionRewound(timestamp=utcnow(), reason=reason)
        await self.storage.enqueue([InboxMessage(instance_id=instance_id, event=event, visible_at=utcnow())])

    async def _plan_rewind_if_requested(
        self, lease: OrchestrationLease, now: datetime
    ) -> OrchestrationCommit | None:
        request = rewind.is_rewind_request(lease.instance, lease.new_events)
        if request is None:
            return None
        history = await self.storage.get_history(lease.instance.instance_id)
        return rewind.plan_rewind(lease.instance, lease.token, history, request, now)

    # --- wake-ups ----------------------------------------------------------------------------

    def _note_fullness(self, kind: WorkKind, leased: int, limit: int) -> None:
        if leased >= limit:
            self._lease_was_full.add(kind)
        else:
            self._lease_was_full.discard(kind)

    def _wake(self, kind: WorkKind) -> None:
        """Wake this backend's callers sleeping in ``wait_for_work(kind)``: prefetched work is here."""
        for fut in self._waiting[kind]:
            if not fut.done():
                fut.set_result(None)

    async def wait_for_work(self, kind: WorkKind, timeout: float) -> None:
        """Return at once when work of ``kind`` was prefetched, the last lease of it was full, or
        work was queued since it began;
        else sleep until a commit queues some (or a timer is due, or ``timeout``). A lease that found
        less than it could take saw everything visible, so looking again before a wake-up would be a
        transaction that finds nothing."""
        prefetched = self._prefetched_orchestrations if kind == "orchestration" else self._prefetched_activities
        if prefetched:  # the armed wake-up and the fullness stay for when it is drained
            return
        woke = self._armed.pop(kind, None)
        if kind in self._lease_was_full or (woke is not None and woke.done()):
            self._lease_was_full.discard(kind)
            if woke is not None:
                self.storage.notifier.unregister(woke)
            return
        if woke is None:
            woke = self.storage.notifier.register(_TOPICS[kind])
        self._waiting[kind].add(woke)  # before any await: prefetched work may come meanwhile
        try:
            await self._sleep(woke, timeout, until_due_messages=kind == "orchestration")
        finally:
            self._waiting[kind].discard(woke)

    async def _sleep(self, woke: asyncio.Future[None], timeout: float, *, until_due_messages: bool) -> None:
        """Wait for ``woke``, no longer than until the next delayed message is due (timers,
        scheduled starts) if ``until_due_messages``, nor than the poll interval of a shared storage."""
        if until_due_messages:
            due = await self.storage.next_visible_at()
            if due is not None:
                timeout = max(0.0, min(timeout, (due - utcnow()).total_seconds()))
        if self.storage.shared_across_processes:
            timeout = min(timeout, self.options.max_poll_seconds)
        await self.storage.notifier.wait(woke, timeout)

    # --- durable entities -----------------------------------------------------------------------
    # Entities are instances with ids "@name@key" (``entities`` says how their rows are used and
    # plans every lease). Orchestration leases never take them; ``lease_entities`` does. Served to
    # the official SDKs by ``duratask serve``; duratask's own worker does not run entities.

    async def signal_entity(
        self,
        instance_id: str,
        operation: str,
        input: str | None,
        *,
        request_id: str | None = None,
        scheduled_time: datetime | None = None,
    ) -> None:
        """Queue a one-way operation for the entity (created if it does not exist), no earlier than
        ``scheduled_time``."""
        entities.parse_entity_id(instance_id)
        if not operation:
            raise ValueError("entity operation name must be a non-empty string")
        self.check_payload("entity operation input", input)
        now = utcnow()
        if scheduled_time is not None and scheduled_time.tzinfo is None:
            scheduled_time = scheduled_time.replace(tzinfo=UTC)
        signal = h.EntityOperationSignaled(
            timestamp=now,
            request_id=request_id or uuid.uuid4().hex,
            operation=operation,
            scheduled_time=scheduled_time,
            input=input,
            target_instance_id=instance_id,
        )
        visible_at = scheduled_time if scheduled_time is not None and scheduled_time > now else now
        await self._deliver_to_entity(instance_id, signal, visible_at)

    async def _deliver_to_entity(self, instance_id: str, event: h.HistoryEvent, visible_at: datetime) -> None:
        """Create the entity's row if missing, then queue the message. A message to a row that
        ``clean_entity_storage`` removed in between is dropped by the storage: seen as a row of
        another execution afterwards, it is sent again (to the new row)."""
        for _ in range(3):
            record = await self.storage.get_instance(instance_id)
            if record is None:
                with contextlib.suppress(OrchestrationAlreadyExistsError):
                    await self.storage.create_instance(entities.new_entity(instance_id, utcnow()))
                record = await self.storage.get_instance(instance_id)
                if record is None:
                    continue
            await self.storage.enqueue(
                [InboxMessage(instance_id=instance_id, event=event, visible_at=visible_at)]
            )
            after = await self.storage.get_instance(instance_id)
            if after is not None and after.execution_id == record.execution_id:
                return
        raise RuntimeError(f"entity {instance_id!r} was removed three times while a message was sent to it")

    async def get_entity(self, instance_id: str, include_state: bool) -> entities.EntityMetadata | None:
        """The entity's metadata; ``None`` unless it exists (has state)."""
        if not entities.is_entity_id(instance_id):
            return None
        record = await self.storage.get_instance(instance_id)
        if record is None or not entities.exists(record):
            return None
        return entities.metadata_of(record, include_state)

    async def query_entities(self, query: entities.EntityQuery) -> entities.EntityQueryResult:
        """One page of entities (ordered by creation, then id) passing the query's filters."""
        if query.page_size <= 0:
            raise ValueError("page_size must be positive")
        prefix = entities.normalize_prefix(query.instance_id_starts_with)
        cursor = decode_cursor(query.continuation_token) if query.continuation_token else None
        found: list[entities.EntityMetadata] = []
        fetch = max(query.page_size, 100)
        while True:
            rows = await self.storage.query_instances(
                InstanceFilter(instance_id_prefix=prefix), fetch, cursor
            )
            for index, row in enumerate(rows):
                cursor = PageCursor(row.created_at, row.instance_id)
                if entities.matches(row, query):
                    found.append(entities.metadata_of(row, query.include_state))
                if len(found) == query.page_size:
                    more = index + 1 < len(rows) or len(rows) == fetch
                    token = encode_cursor(cursor) if more else None
                    return entities.EntityQueryResult(entities=found, continuation_token=token)
            if len(rows) < fetch:
                return entities.EntityQueryResult(entities=found, continuation_token=None)

    async def clean_entity_storage(
        self,
        remove_empty_entities: bool,
        release_orphaned_locks: bool,
        continuation_token: str | None = None,
        page_size: int = 500,
    ) -> entities.CleanEntityStorageResult:
        """One page of entities cleaned: locks held by orchestrations that ended or no longer exist
        are released (an unlock is queued to the entity), and rows with no state, no lock, no
        backlog and no pending messages are removed. A continuation token means more pages."""
        after = decode_cursor(continuation_token) if continuation_token else None
        entity_rows = InstanceFilter(instance_id_prefix=entities.ENTITY_ID_PREFIX)
        rows = await self.storage.query_instances(entity_rows, page_size + 1, after)
        page, more = rows[:page_size], len(rows) > page_size
        released = 0
        empty: list[str] = []
        for row in page:
            status = entities.read_status(row)
            if release_orphaned_locks and status.locked_by is not None:
                holder = await self.storage.get_instance(status.locked_by)
                if holder is None or holder.status.is_terminal:
                    await self._release_lock(row.instance_id, status)
                    released += 1
                continue
            if remove_empty_entities and entities.is_empty(row):
                empty.append(row.instance_id)
        removed = await self.storage.delete_idle_instances(empty) if empty else 0
        token = encode_cursor(PageCursor(page[-1].created_at, page[-1].instance_id)) if more else None
        return entities.CleanEntityStorageResult(
            empty_entities_removed=removed, orphaned_locks_released=released, continuation_token=token
        )

    async def _release_lock(self, instance_id: str, status: entities.EntityStatus) -> None:
        """Unlock on behalf of a holder that cannot any more (the entity applies it in order)."""
        assert status.critical_section_id is not None
        unlock = h.EntityUnlockSent(
            timestamp=utcnow(),
            critical_section_id=status.critical_section_id,
            parent_instance_id=status.locked_by,
            target_instance_id=instance_id,
        )
        await self.storage.enqueue([InboxMessage(instance_id=instance_id, event=unlock, visible_at=utcnow())])

    async def lease_entities(
        self, limit: int, max_batch: int = entities.DEFAULT_MAX_BATCH
    ) -> list[entities.EntityWorkItem]:
        """Lease up to ``limit`` entities with messages. Leases that need no worker (lock requests,
        unlocks, messages that must wait for a lock) are settled here; the others become batches."""
        self._arm_entities()
        leases = await self.storage.lease_orchestrations(
            limit, self.options.lease_seconds, id_prefix=entities.ENTITY_ID_PREFIX
        )
        items: list[entities.EntityWorkItem] = []
        settle: list[OrchestrationCommit] = []
        now = utcnow()
        for lease in leases:
            backlog = (
                await self.storage.get_history(lease.instance.instance_id) if lease.history_length else []
            )
            plan = entities.plan_lease(lease.instance, lease.token, backlog, lease.new_events, now, max_batch)
            if not plan.operations:
                settle.append(entities.plan_commit(plan, None, now))
                continue
            self._entity_leases[lease.token] = plan
            items.append(plan.work_item())
        if settle:
            await self.storage.commit_orchestrations(settle)
        return items

    async def complete_entities(
        self, done: list[tuple[entities.EntityWorkItem, entities.EntityBatchOutcome]]
    ) -> list[bool]:
        """Store each batch's outcome under its lease (group commit); ``False`` where the lease was
        lost (then nothing of the batch is stored and its messages are delivered again)."""
        now = utcnow()
        commits: list[OrchestrationCommit] = []
        for item, outcome in done:
            plan = self._entity_leases.pop(item.token, None)
            if plan is None:
                commits.append(_fenced_out_entity(item))
                continue
            commits.append(entities.plan_commit(plan, self._enforce_entity_limits(outcome), now))
        return await self.storage.commit_orchestrations(commits)

    def _enforce_entity_limits(self, outcome: entities.EntityBatchOutcome) -> entities.EntityBatchOutcome:
        """An oversized state, result or signal input fails the whole batch (the state stays)."""
        payloads: list[tuple[str, str | None]] = [("entity state", outcome.state)]
        payloads += [
            ("entity operation result", r.result)
            for r in outcome.results
            if isinstance(r, entities.OperationSucceeded)
        ]
        payloads += [(f"{type(a).__name__} input", a.input) for a in outcome.actions]
        for what, payload in payloads:
            failure = self._oversized(what, payload)
            if failure is not None:
                return entities.EntityBatchOutcome(results=[], failure=failure)
        return outcome

    async def abandon_entity(self, item: entities.EntityWorkItem) -> None:
        """Give a batch back unrun; its messages are delivered again."""
        self._entity_leases.pop(item.token, None)
        await self.storage.abandon_orchestration(item.instance_id, item.token)

    def _arm_entities(self) -> None:
        if self._entity_armed is None or self._entity_armed.done():
            self._entity_armed = self.storage.notifier.register(self._entity_topic)

    async def wait_for_entity_work(self, timeout: float) -> None:
        """``wait_for_work`` for entities: until a message may be ready (entity messages travel
        through the same inboxes as orchestrations'), a delayed signal is due, or ``timeout``."""
        woke, self._entity_armed = self._entity_armed, None
        if woke is None:
            woke = self.storage.notifier.register(self._entity_topic)
        elif woke.done():
            self.storage.notifier.unregister(woke)
            return
        await self._sleep(woke, timeout, until_due_messages=True)


_TOPICS: dict[WorkKind, str] = {"orchestration": ORCHESTRATIONS, "activity": ACTIVITIES}


def _start_first(lease: OrchestrationLease) -> list[h.HistoryEvent]:
    """A new execution's events: its ExecutionStarted first, then the others in the order they happened.

    After continue-as-new the inbox holds, in insertion order, events that arrived while the last
    episode ran, then the new ExecutionStarted with the carried-over events, then later arrivals.
    All but the start belong to the new execution in the order they were raised (their timestamps).
    """
    events = lease.new_events
    if lease.history_length:
        return events
    start = next((i for i, e in enumerate(events) if isinstance(e, h.ExecutionStarted)), 0)
    if not start and all(a.timestamp <= b.timestamp for a, b in pairwise(events[1:])):
        return events
    rest = sorted((e for i, e in enumerate(events) if i != start), key=lambda e: e.timestamp)
    return [events[start], *rest]


def _reached(status: Status, until: WaitUntil) -> bool:
    return status.is_terminal if until == "completion" else status is not Status.PENDING


def _payload_of(action: h.OrchestratorAction) -> str | None:
    if isinstance(action, h.SendEvent):
        return action.data
    if isinstance(action, h.SendEntityMessage):
        return getattr(action.message, "input", None)
    if isinstance(action, (h.ScheduleTask, h.CreateSubOrchestration)):
        return action.input
    if isinstance(action, h.CompleteOrchestration):
        return action.result
    return None


def _fenced_out_entity(item: entities.EntityWorkItem) -> OrchestrationCommit:
    """A commit the storage will reject: the entity lease is not (or no longer) ours."""
    placeholder = entities.new_entity(item.instance_id, utcnow()).record
    return OrchestrationCommit(token=item.token, instance=placeholder, history_append=[])


def _fenced_out(item: OrchestrationWorkItem) -> OrchestrationCommit:
    """A commit the storage will reject: the lease is not (or no longer) ours."""
    placeholder = InstanceRecord(
        instance_id=item.instance_id,
        name=item.name,
        execution_id=item.execution_id,
        status=Status.RUNNING,
        created_at=utcnow(),
        last_updated_at=utcnow(),
    )
    return OrchestrationCommit(token=item.token, instance=placeholder, history_append=[])


def _take(buffer: deque[T], limit: int) -> list[T]:
    """Up to ``limit`` items from the front of ``buffer``."""
    return [buffer.popleft() for _ in range(min(limit, len(buffer)))]
