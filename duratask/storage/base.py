"""The Storage seam: small, dumb, transactional.

A storage keeps, per task hub: instances, their history, their inbox (messages with a
visible-at time: new events, fired timers, scheduled starts), the activity queue, and leases.
It makes no orchestration decisions; ``duratask.backend.local.LocalBackend`` does, and hands it
ready-made commits. Every implementation passes ``tests/storage`` (one contract suite).

Rules every implementation keeps:

- A lease is (token, expiry). Leasing an orchestration marks the inbox messages it delivers with the
  token; messages that arrive later wait for the next lease. Only one orchestration lease per
  instance exists at a time.
- A commit or completion is *fenced*: it applies only if its token still holds the lease and the
  lease has not expired; otherwise it is rejected whole (returns ``False``) and nothing changes.
- ``commit_orchestrations`` and ``complete_activities`` apply a whole batch in one transaction
  (group commit), each item fenced on its own.
- After a commit, ``notifier`` is told (topics in ``duratask.notify``), so waiters in the process wake.
- Times are timezone-aware UTC ``datetime``s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import msgspec

from ..errors import DurableTaskError, OrchestrationAlreadyExistsError
from ..history import ExecutionStarted, HistoryEvent, TaskCompleted, TaskFailed
from ..models import OrchestrationRuntimeStatus, TaskFailureDetails
from ..notify import Notifier


class InstanceRecord(msgspec.Struct, kw_only=True):
    """One row of the instances table (the current execution of an instance)."""

    instance_id: str
    name: str
    execution_id: str
    status: OrchestrationRuntimeStatus
    created_at: datetime
    last_updated_at: datetime
    input: str | None = None
    output: str | None = None
    custom_status: str | None = None
    failure: TaskFailureDetails | None = None
    version: str | None = None
    parent_instance_id: str | None = None
    #: the parent's TaskScheduled id for this sub-orchestration (where its result is delivered)
    parent_task_id: int | None = None
    scheduled_start: datetime | None = None
    completed_at: datetime | None = None


class InboxMessage(msgspec.Struct, frozen=True, kw_only=True):
    """An event for an instance's inbox, dispatched no earlier than ``visible_at``."""

    instance_id: str
    event: HistoryEvent
    visible_at: datetime


class NewInstance(msgspec.Struct, frozen=True, kw_only=True):
    """An instance to create (client start or sub-orchestration), with its ExecutionStarted message."""

    record: InstanceRecord
    started: ExecutionStarted
    visible_at: datetime


class ActivityTask(msgspec.Struct, frozen=True, kw_only=True):
    """An activity to run: ``task_id`` is the TaskScheduled event id in the orchestration."""

    instance_id: str
    execution_id: str
    task_id: int
    name: str
    input: str | None = None
    version: str | None = None


class OrchestrationLease(msgspec.Struct, kw_only=True):
    """An instance handed to one worker, with the new events it must process."""

    instance: InstanceRecord
    token: str
    expires_at: datetime
    new_events: list[HistoryEvent]
    history_length: int


class ActivityLease(msgspec.Struct, kw_only=True):
    """An activity handed to one worker."""

    activity_id: int
    token: str
    expires_at: datetime
    task: ActivityTask
    attempt: int


class OrchestrationCommit(msgspec.Struct, kw_only=True):
    """Everything one orchestration episode changes, applied atomically under its lease.

    ``instance`` is the instance row as it stands after the episode. With ``reset_history``
    (continue-as-new) the old history is deleted before ``history_append`` is written.
    ``messages`` go to inboxes (this instance's timers and carried-over events, other instances'
    events and sub-orchestration results); a message for an instance that does not exist is dropped.
    ``new_instances`` are sub-orchestrations: created unless an unfinished instance has the id.
    """

    token: str
    instance: InstanceRecord
    history_append: list[HistoryEvent]
    reset_history: bool = False
    messages: list[InboxMessage] = msgspec.field(default_factory=list)
    new_instances: list[NewInstance] = msgspec.field(default_factory=list)
    activities: list[ActivityTask] = msgspec.field(default_factory=list)


class ActivityCompletion(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a leased activity: delivered to its instance's inbox if the execution still runs."""

    activity_id: int
    token: str
    instance_id: str
    execution_id: str
    event: TaskCompleted | TaskFailed


class InstanceFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Filters on instances, all AND-ed. ``instance_id_prefix`` matches literally (no wildcards)."""

    statuses: list[OrchestrationRuntimeStatus] | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    instance_id_prefix: str | None = None


class PageCursor(msgspec.Struct, frozen=True):
    """Position after the last instance of a page: ordering is (created_at, instance_id)."""

    created_at: datetime
    instance_id: str


class PendingMessage(msgspec.Struct, frozen=True, kw_only=True):
    """An inbox message of a dumped instance: delivered no earlier than ``visible_at``."""

    visible_at: datetime
    event: HistoryEvent


class PendingActivity(msgspec.Struct, frozen=True, kw_only=True):
    """A queued activity of a dumped instance. ``attempt`` counts its deliveries so far."""

    execution_id: str
    task_id: int
    name: str
    input: str | None = None
    version: str | None = None
    created_at: datetime
    attempt: int = 0


class InstanceDump(msgspec.Struct, kw_only=True):
    """One instance with everything needed to carry on elsewhere: its record, its whole history,
    its inbox (in arrival order) and its activity queue (in queue order).

    Leases are not part of it: work leased when the dump was taken is dumped as waiting, and is
    delivered again after import (as after a worker crash).
    """

    instance: InstanceRecord
    history: list[HistoryEvent] = msgspec.field(default_factory=list)
    inbox: list[PendingMessage] = msgspec.field(default_factory=list)
    activities: list[PendingActivity] = msgspec.field(default_factory=list)


class ImportConflictError(OrchestrationAlreadyExistsError):
    """Instances to import whose ids already exist in the task hub (and ``replace`` was not asked)."""

    def __init__(self, instance_ids: list[str]) -> None:
        more = f" and {len(instance_ids) - 1} more" if len(instance_ids) > 1 else ""
        DurableTaskError.__init__(
            self,
            f"cannot import instance {instance_ids[0]!r}{more}: the task hub already has "
            f"{'instances with these ids' if more else 'an instance with that id'}",
        )
        self.instance_id = instance_ids[0]
        self.instance_ids = instance_ids


def prefix_range(prefix: str) -> tuple[str, str]:
    """The ids starting with ``prefix`` as the range [low, high) of code-point order (how both
    storages sort ids), so that an index serves a prefix filter."""
    head = prefix.rstrip(chr(0x10FFFF))
    if not head:
        return prefix, chr(0x10FFFF) * (len(prefix) + 1)  # no upper bound below the largest ids
    return prefix, head[:-1] + chr(ord(head[-1]) + 1)


class Storage(Protocol):
    """The persistence seam. One object serves one task hub of one database."""

    notifier: Notifier
    #: True when other processes may change the data (waiters must also poll).
    shared_across_processes: bool

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    # --- instances ---------------------------------------------------------------------------

    async def create_instance(self, new: NewInstance) -> None:
        """Create an instance; an existing terminal one is replaced (its history, inbox and
        activities deleted). Raises ``OrchestrationAlreadyExistsError`` if one exists unfinished."""

    async def get_instance(self, instance_id: str) -> InstanceRecord | None: ...

    async def query_instances(
        self, filter: InstanceFilter, limit: int, after: PageCursor | None
    ) -> list[InstanceRecord]:
        """Instances matching ``filter`` ordered by (created_at, instance_id), after ``after``."""

    async def get_history(self, instance_id: str) -> list[HistoryEvent]: ...

    async def child_instance_ids(self, instance_id: str) -> list[str]:
        """Ids of the instances whose parent is ``instance_id``."""

    async def enqueue(self, messages: list[InboxMessage]) -> None:
        """Append messages to inboxes (dropped for instances that do not exist)."""

    async def delete_instances(self, instance_ids: list[str]) -> int:
        """Delete terminal instances with their history, inbox and activities; returns the count."""

    async def delete_instances_matching(self, filter: InstanceFilter) -> int:
        """Delete every terminal instance matching ``filter``; returns the count."""

    async def delete_idle_instances(self, instance_ids: list[str]) -> int:
        """Delete those of the instances, whatever their status, that no live lease holds and that
        have no inbox messages and no activities, with their history; returns the count.

        Atomic against senders: a message sent at the same time is either in the inbox first (the
        instance stays) or finds the instance gone (dropped, as for any missing instance).
        """

    async def next_visible_at(self) -> datetime | None:
        """When the earliest not-yet-visible inbox message becomes visible (timers), if any."""

    # --- orchestration work items -----------------------------------------------------------

    async def lease_orchestrations(
        self,
        limit: int,
        lease_seconds: float,
        *,
        id_prefix: str | None = None,
        exclude_id_prefix: str | None = None,
    ) -> list[OrchestrationLease]:
        """Lease up to ``limit`` unlocked (or lease-expired) instances that have visible inbox messages.

        With ``id_prefix`` only instances whose id starts with it; with ``exclude_id_prefix`` none
        whose id starts with it (literal prefixes: the backend keeps entities, ``@name@key``, apart
        from orchestrations this way).
        """

    async def commit_orchestrations(self, commits: list[OrchestrationCommit]) -> list[bool]:
        """Apply each commit whose lease holds, in one transaction; consumes the leased messages
        and releases the lease. Returns, per commit, whether it was applied."""

    async def abandon_orchestration(self, instance_id: str, token: str) -> None:
        """Release a lease without changes; its messages are delivered again."""

    async def renew_orchestration_lease(self, instance_id: str, token: str, lease_seconds: float) -> bool:
        """Extend a live lease to ``lease_seconds`` from now; ``False`` if it is no longer held."""

    # --- activity work items ----------------------------------------------------------------

    async def lease_activities(self, limit: int, lease_seconds: float) -> list[ActivityLease]: ...

    async def complete_activities(self, completions: list[ActivityCompletion]) -> list[bool]:
        """Remove each fenced activity and deliver its result event, in one transaction."""

    async def abandon_activity(self, activity_id: int, token: str) -> None: ...

    async def renew_activity_lease(self, activity_id: int, token: str, lease_seconds: float) -> bool: ...

    # --- moving instances between storages (``duratask export`` / ``import``) -------------------

    async def export_instances(self, after: str | None, limit: int) -> list[InstanceDump]:
        """Up to ``limit`` instances whose id sorts after ``after`` (all, from the first, when
        ``None``), in id order (code points), each with its history, inbox and activities, the
        whole page read in one transaction."""

    async def import_instances(self, dumps: list[InstanceDump], *, replace: bool = False) -> int:
        """Create the dumped instances as they were, in one transaction; returns how many.

        An instance whose id exists already (in any status) fails the whole batch with
        ``ImportConflictError``, unless ``replace``: then the existing one is deleted first, with
        its history, inbox and activities. Imported work is unleased and ready to run."""


# --- a completion and the lease of the work it made ready, in one go -------------------------------
# A storage may offer these as one transaction (``commit_orchestrations_then_lease_activities``,
# ``complete_activities_then_lease_orchestrations``): the worker that completes a step takes the
# next one without another round trip, and nobody else need be woken for work it took. Where a
# storage has no such method, the two halves run one after the other: the same outcome, two trips.


async def commit_then_lease_activities(
    storage: Storage, commits: list[OrchestrationCommit], limit: int, lease_seconds: float
) -> tuple[list[bool], list[ActivityLease]]:
    """``commit_orchestrations``, then ``lease_activities(limit)``."""
    combined = getattr(storage, "commit_orchestrations_then_lease_activities", None)
    if combined is not None:
        result: tuple[list[bool], list[ActivityLease]] = await combined(commits, limit, lease_seconds)
        return result
    applied = await storage.commit_orchestrations(commits)
    return applied, await storage.lease_activities(limit, lease_seconds)


async def complete_then_lease_orchestrations(
    storage: Storage,
    completions: list[ActivityCompletion],
    limit: int,
    lease_seconds: float,
    *,
    exclude_id_prefix: str | None = None,
) -> tuple[list[bool], list[OrchestrationLease]]:
    """``complete_activities``, then ``lease_orchestrations(limit)``."""
    combined = getattr(storage, "complete_activities_then_lease_orchestrations", None)
    if combined is not None:
        result: tuple[list[bool], list[OrchestrationLease]] = await combined(
            completions, limit, lease_seconds, exclude_id_prefix=exclude_id_prefix
        )
        return result
    applied = await storage.complete_activities(completions)
    leases = await storage.lease_orchestrations(limit, lease_seconds, exclude_id_prefix=exclude_id_prefix)
    return applied, leases
