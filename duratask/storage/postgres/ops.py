"""The storage operations as plain async functions: reads over a connection, writes over a ``Tx``
(one transaction). Batches travel as arrays (``unnest``), so a group commit costs a handful of
statements however many items it holds."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from ...history import HistoryEvent, decode_event, encode_event
from ...models import OrchestrationRuntimeStatus
from ...notify import ACTIVITIES, ORCHESTRATIONS, instance_topic
from ..base import (
    ActivityCompletion,
    ActivityLease,
    ActivityTask,
    InboxMessage,
    InstanceFilter,
    InstanceRecord,
    NewInstance,
    OrchestrationCommit,
    OrchestrationLease,
    PageCursor,
    prefix_range,
)
from ..rows import activity_lease
from .db import Connection, Tx
from .filters import TERMINAL_STATUS_VALUES, select_instances, select_purgeable_ids
from .rows import instance_arrays, instance_from_row, utc
from .sql import Q

#: Leasable messages the orchestration lease reads per instance it may lease: an instance with
#: several messages shows up once per message, and the oldest instances may be held by another
#: leaser right now (skipped), so the read goes past the limit, but not much: it locks nothing.
_SCAN_FACTOR = 2


async def plan_by_index(tx: Tx) -> None:
    """Read by index for the rest of this transaction, whatever the statistics (see queries.sql).
    Once per transaction: a commit that leases the next step along would otherwise say it twice."""
    if not tx.planned_by_index:
        tx.planned_by_index = True
        await tx.conn.execute(Q.plan_by_index)


async def _all(conn: Connection, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


async def _one(conn: Connection, query: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    cur = await conn.execute(query, params)
    return await cur.fetchone()


# --- reads -----------------------------------------------------------------------------------


async def get_instance(conn: Connection, taskhub: str, instance_id: str) -> InstanceRecord | None:
    row = await _one(conn, Q.get_instance, {"taskhub": taskhub, "instance_id": instance_id})
    return None if row is None else instance_from_row(row)


async def query_instances(
    conn: Connection, taskhub: str, filter: InstanceFilter, limit: int, after: PageCursor | None
) -> list[InstanceRecord]:
    if limit <= 0:
        return []
    query, params = select_instances(taskhub, filter, limit, after)
    return [instance_from_row(row) for row in await _all(conn, query, params)]


async def get_history(conn: Connection, taskhub: str, instance_id: str) -> list[HistoryEvent]:
    rows = await _all(conn, Q.get_history, {"taskhub": taskhub, "instance_id": instance_id})
    return [decode_event(event) for (event,) in rows]


async def child_instance_ids(conn: Connection, taskhub: str, instance_id: str) -> list[str]:
    rows = await _all(conn, Q.child_instance_ids, {"taskhub": taskhub, "instance_id": instance_id})
    return [child for (child,) in rows]


async def next_visible_at(conn: Connection, taskhub: str) -> datetime | None:
    row = await _one(conn, Q.next_visible_at, {"taskhub": taskhub})
    return None if row is None or row[0] is None else row[0].astimezone(UTC)


# --- instances -------------------------------------------------------------------------------


async def create_instances(tx: Tx, news: list[NewInstance]) -> set[str]:
    """Create each instance unless an unfinished one has its id (a terminal one is replaced, with its
    history, inbox and activities); returns the ids created. The first of duplicate ids wins."""
    by_id: dict[str, NewInstance] = {}
    for new in news:
        by_id.setdefault(new.record.instance_id, new)
    unique = list(by_id.values())
    ids = list(by_id)
    rows = await _all(tx.conn, Q.lock_instance_statuses, {"taskhub": tx.taskhub, "instance_ids": ids})
    existing = {instance_id: OrchestrationRuntimeStatus(status) for instance_id, status in rows}
    finished = [instance_id for instance_id, status in existing.items() if status.is_terminal]
    if finished:
        await _delete_terminal(tx, finished)
    candidates = [
        new
        for new in unique
        if new.record.instance_id not in existing or existing[new.record.instance_id].is_terminal
    ]
    if not candidates:
        return set()
    rows = await _all(
        tx.conn, Q.insert_instances, instance_arrays(tx.taskhub, (n.record for n in candidates))
    )
    created = {instance_id for (instance_id,) in rows}
    started = [
        InboxMessage(instance_id=new.record.instance_id, event=new.started, visible_at=new.visible_at)
        for new in candidates
        if new.record.instance_id in created
    ]
    await _insert_messages(tx, started)
    tx.notify(ORCHESTRATIONS, *(instance_topic(instance_id) for instance_id in created))
    return created


async def _delete_terminal(tx: Tx, instance_ids: list[str]) -> list[str]:
    """Delete the terminal ones among ``instance_ids`` with everything they own; returns those deleted."""
    key = {"taskhub": tx.taskhub, "instance_ids": instance_ids, "terminal": TERMINAL_STATUS_VALUES}
    deleted = [instance_id for (instance_id,) in await _all(tx.conn, Q.delete_terminal_instances, key)]
    if deleted:
        # Separate statements (not one CTE): each sees messages committed by writers that waited
        # for the rows deleted above.
        owned = {"taskhub": tx.taskhub, "instance_ids": deleted}
        for statement in (Q.delete_history_of, Q.delete_inbox_of, Q.delete_activities_of):
            await tx.conn.execute(statement, owned)
    return deleted


async def _insert_messages(tx: Tx, messages: Iterable[InboxMessage]) -> bool:
    """Append to existing instances' inboxes, in order; returns whether any message was given."""
    batch = list(messages)
    if not batch:
        return False
    await tx.conn.execute(
        Q.insert_messages_if_instance_exists,
        {
            "taskhub": tx.taskhub,
            "instance_ids": [m.instance_id for m in batch],
            "visible_ats": [utc(m.visible_at) for m in batch],
            "events": [encode_event(m.event) for m in batch],
        },
    )
    return True


async def enqueue(tx: Tx, messages: list[InboxMessage]) -> None:
    if await _insert_messages(tx, messages):
        tx.notify(ORCHESTRATIONS)


async def delete_instances(tx: Tx, instance_ids: list[str]) -> int:
    deleted = await _delete_terminal(tx, list(dict.fromkeys(instance_ids)))
    tx.notify(*(instance_topic(instance_id) for instance_id in deleted))
    return len(deleted)


async def delete_idle_instances(tx: Tx, instance_ids: list[str]) -> int:
    key = {"taskhub": tx.taskhub, "instance_ids": list(dict.fromkeys(instance_ids))}
    await tx.conn.execute(Q.lock_instances_for_delete, key)
    deleted = [instance_id for (instance_id,) in await _all(tx.conn, Q.delete_idle_instances, key)]
    if deleted:
        await tx.conn.execute(Q.delete_history_of, {"taskhub": tx.taskhub, "instance_ids": deleted})
        tx.notify(*(instance_topic(instance_id) for instance_id in deleted))
    return len(deleted)


async def delete_matching_batch(tx: Tx, filter: InstanceFilter, batch: int) -> int:
    """Delete up to ``batch`` terminal instances matching ``filter``; the caller repeats until fewer.

    No notifications: a terminal instance has no waiters (waits for it return at once), and a purge
    of 100,000 instances would otherwise flood every listener.
    """
    query, params = select_purgeable_ids(tx.taskhub, filter, batch)
    ids = [instance_id for (instance_id,) in await _all(tx.conn, query, params)]
    return len(await _delete_terminal(tx, ids)) if ids else 0


# --- orchestration work items ----------------------------------------------------------------


async def lease_orchestrations(
    tx: Tx,
    limit: int,
    lease_seconds: float,
    id_prefix: str | None = None,
    exclude_id_prefix: str | None = None,
    preferred: list[str] | None = None,
) -> list[OrchestrationLease]:
    """One statement (see queries.sql), planned by index; then the release of leases that found no
    message (rare: see the statement). ``preferred`` instances are taken before all others."""
    if limit <= 0:
        return []
    await plan_by_index(tx)
    params = {
        "nonce": uuid.uuid4().hex,
        "taskhub": tx.taskhub,
        "limit": limit,
        "scan_limit": limit * _SCAN_FACTOR,
        "lease_seconds": float(lease_seconds),
        "exclude_id_prefix": exclude_id_prefix or None,
        "preferred": preferred or [],
        "origin": tx.origin,
    }
    params["id_from"], params["id_to"] = prefix_range(id_prefix) if id_prefix else (None, None)
    leases = await _leases_from_rows(await _all(tx.conn, Q.lease_orchestrations, params))
    for lease in [lease for lease in leases if not lease.new_events]:
        # Its messages were consumed between the statement's snapshot and its lock (another worker
        # leased and committed it meanwhile): nothing to deliver, so give the lease back.
        params = {"taskhub": tx.taskhub, "instance_id": lease.instance.instance_id, "token": lease.token}
        await tx.conn.execute(Q.release_instance_lease, params)
    return [lease for lease in leases if lease.new_events]


async def _leases_from_rows(rows: list[tuple[Any, ...]]) -> list[OrchestrationLease]:
    """The leases of the lease statement's three kinds of rows (see queries.sql), oldest first."""
    leases: dict[str, OrchestrationLease] = {}
    messages: dict[str, list[tuple[int, bytes]]] = {}
    first_ready: dict[str, datetime] = {}
    for kind, ready_at, message_id, event, history_length, token, expires_at, *instance in rows:
        instance_id = instance[0]
        if kind == "lease":
            leases[instance_id] = OrchestrationLease(
                instance=instance_from_row(instance),
                token=token,
                expires_at=expires_at.astimezone(UTC),
                new_events=[],
                history_length=history_length,
            )
        elif kind == "message":
            messages.setdefault(instance_id, []).append((message_id, event))
        else:
            first_ready[instance_id] = ready_at
    for instance_id, lease in leases.items():
        lease.new_events = [decode_event(event) for _, event in sorted(messages.get(instance_id, ()))]
    return sorted(leases.values(), key=lambda lease: first_ready[lease.instance.instance_id])


async def commit_orchestrations(tx: Tx, commits: list[OrchestrationCommit]) -> list[bool]:
    """Fence every commit against the locked lease rows, then apply the accepted ones together."""
    results, _ = await _commit_orchestrations(tx, commits, 0, 0.0)
    return results


async def commit_orchestrations_then_lease_activities(
    tx: Tx, commits: list[OrchestrationCommit], limit: int, lease_seconds: float
) -> tuple[list[bool], list[ActivityLease]]:
    """``commit_orchestrations`` then ``lease_activities(limit)``, in one transaction: the activities
    the commits schedule are inserted already leased to the caller (as many as ``limit``), and
    nobody is woken for them; what room is left takes free activities as any lease would."""
    results, own = await _commit_orchestrations(tx, commits, limit, lease_seconds)
    others = await lease_activities(tx, limit - len(own), lease_seconds)
    return results, sorted([*own, *others], key=lambda lease: lease.activity_id)


async def _commit_orchestrations(
    tx: Tx, commits: list[OrchestrationCommit], take_activities: int, lease_seconds: float
) -> tuple[list[bool], list[ActivityLease]]:
    """The fence and the apply; returns the leases of the scheduled activities taken (the first
    ``take_activities`` of them)."""
    await plan_by_index(tx)
    ids = list(dict.fromkeys(commit.instance.instance_id for commit in commits))
    live = {
        instance_id: (token, length, status)
        for instance_id, token, length, status in await _all(
            tx.conn, Q.lock_live_leases, {"taskhub": tx.taskhub, "instance_ids": ids}
        )
    }
    accepted: list[tuple[OrchestrationCommit, int]] = []
    applied: set[str] = set()  # a second commit of one instance in the batch finds its lease released
    results: list[bool] = []
    for commit in commits:
        instance_id = commit.instance.instance_id
        held = live.get(instance_id)
        ok = held is not None and held[0] == commit.token and instance_id not in applied
        results.append(ok)
        if ok and held is not None:
            applied.add(instance_id)
            accepted.append((commit, held[1]))
            if held[2] != commit.instance.status.value:  # waiters on an instance wait for its status
                tx.notify(instance_topic(instance_id))
    if not accepted:
        return results, []
    return results, await _apply(tx, accepted, take_activities, lease_seconds)


async def _apply(
    tx: Tx, accepted: list[tuple[OrchestrationCommit, int]], take_activities: int, lease_seconds: float
) -> list[ActivityLease]:
    conn, taskhub = tx.conn, tx.taskhub
    ids = [commit.instance.instance_id for commit, _ in accepted]
    reset = [commit.instance.instance_id for commit, _ in accepted if commit.reset_history]
    if reset:
        await conn.execute(Q.delete_history_of, {"taskhub": taskhub, "instance_ids": reset})

    history: dict[str, list[Any]] = {"instance_ids": [], "seqs": [], "events": []}
    lengths: list[int] = []
    for commit, length in accepted:
        first = 0 if commit.reset_history else length
        for offset, event in enumerate(commit.history_append):
            history["instance_ids"].append(commit.instance.instance_id)
            history["seqs"].append(first + offset)
            history["events"].append(encode_event(event))
        lengths.append(first + len(commit.history_append))
    if history["seqs"]:
        await conn.execute(Q.insert_history, {"taskhub": taskhub, **history})
    updates = instance_arrays(taskhub, (commit.instance for commit, _ in accepted))
    await conn.execute(Q.update_instances_and_release, {**updates, "history_lengths": lengths})
    await conn.execute(
        Q.consume_messages,
        {"taskhub": taskhub, "instance_ids": ids, "tokens": [c.token for c, _ in accepted]},
    )

    activities = [task for commit, _ in accepted for task in commit.activities]
    taken: list[ActivityLease] = []
    if activities:
        taken = await _insert_activities(tx, activities, take_activities, lease_seconds)
        if len(taken) < len(activities):  # wake others only for activities the committer left
            tx.notify(ACTIVITIES)
    # Sub-orchestrations before messages: an event sent to a child created in the same episode
    # must find it.
    new_instances = [new for commit, _ in accepted for new in commit.new_instances]
    if new_instances:
        await create_instances(tx, new_instances)
    sent = await _insert_messages(tx, (m for commit, _ in accepted for m in commit.messages))
    if sent or await _any_visible_message(tx, ids):
        # Also when messages that arrived during the lease wait: a worker that found this instance
        # leased went back to sleep.
        tx.notify(ORCHESTRATIONS)
    return taken


async def _any_visible_message(tx: Tx, instance_ids: list[str]) -> bool:
    row = await _one(tx.conn, Q.any_visible_message, {"taskhub": tx.taskhub, "instance_ids": instance_ids})
    return bool(row and row[0])


async def _insert_activities(
    tx: Tx, activities: list[ActivityTask], take: int, lease_seconds: float
) -> list[ActivityLease]:
    """Insert ``activities``, the first ``take`` of them leased to the caller; returns those leases."""
    params: dict[str, Any] = {
        "taskhub": tx.taskhub,
        "instance_ids": [task.instance_id for task in activities],
        "execution_ids": [task.execution_id for task in activities],
        "task_ids": [task.task_id for task in activities],
        "names": [task.name for task in activities],
        "versions": [task.version for task in activities],
        "inputs": [task.input for task in activities],
    }
    if take <= 0:
        await tx.conn.execute(Q.insert_activities, params)
        return []
    params |= {"take": take, "lease_seconds": float(lease_seconds)}
    rows = await _all(tx.conn, Q.insert_activities_leasing_first, params)
    return [_activity_lease(row) for row in rows if row[1] is not None]


def _activity_lease(row: tuple[Any, ...]) -> ActivityLease:
    """An ``ActivityLease`` of a row: id, token, expiry, then the columns ``activity_lease`` reads after
    the token."""
    activity_id, token, expires_at, *task_and_attempt = row
    return activity_lease((activity_id, token, *task_and_attempt), expires_at.astimezone(UTC))


async def abandon_orchestration(tx: Tx, instance_id: str, token: str) -> None:
    params = {"taskhub": tx.taskhub, "instance_id": instance_id, "token": token}
    if await _all(tx.conn, Q.release_instance_lease, params):
        await tx.conn.execute(Q.unmark_messages, params)
        tx.notify(ORCHESTRATIONS)


# --- activity work items ---------------------------------------------------------------------


async def lease_activities(tx: Tx, limit: int, lease_seconds: float) -> list[ActivityLease]:
    if limit <= 0:
        return []
    await plan_by_index(tx)
    params = {"taskhub": tx.taskhub, "limit": limit, "lease_seconds": float(lease_seconds)}
    rows = sorted(await _all(tx.conn, Q.lease_activities, params))
    return [_activity_lease(row) for row in rows]


async def complete_activities(tx: Tx, completions: list[ActivityCompletion]) -> list[bool]:
    results, _ = await _complete_activities(tx, completions)
    return results


async def complete_activities_then_lease_orchestrations(
    tx: Tx,
    completions: list[ActivityCompletion],
    limit: int,
    lease_seconds: float,
    exclude_id_prefix: str | None,
) -> tuple[list[bool], list[OrchestrationLease]]:
    """``complete_activities`` then ``lease_orchestrations(limit)``, in one transaction; the
    instances the results were delivered to are leased before any other (their next step stays in
    this process, whose cache holds them), unless another process ran them last (it holds them in
    its cache: they are left to it, and it is woken), and if all of them were, nobody is woken."""
    results, delivered = await _complete_activities(tx, completions)
    preferred = sorted(
        instance_id for instance_id, runner in delivered.items() if runner in (None, tx.origin)
    )
    leases = await lease_orchestrations(
        tx, limit, lease_seconds, exclude_id_prefix=exclude_id_prefix, preferred=preferred
    )
    if delivered and delivered.keys() <= {lease.instance.instance_id for lease in leases}:
        tx.topics.discard(ORCHESTRATIONS)  # the only topic a completion sends
    return results, leases


async def _complete_activities(
    tx: Tx, completions: list[ActivityCompletion]
) -> tuple[list[bool], dict[str, str | None]]:
    """The fence and the deliveries; returns the instances a result was delivered to, each with
    the origin of its last lease (``runner``, migration 0003)."""
    await plan_by_index(tx)
    taken = {
        activity_id: (token, instance_id, execution_id)
        for activity_id, token, instance_id, execution_id in await _all(
            tx.conn,
            Q.take_completed_activities,
            {
                "taskhub": tx.taskhub,
                "ids": [c.activity_id for c in completions],
                "tokens": [c.token for c in completions],
            },
        )
    }
    results: list[bool] = []
    deliveries: list[tuple[str, str, bytes]] = []
    for completion in completions:
        row = taken.get(completion.activity_id)
        ok = row is not None and row[0] == completion.token
        results.append(ok)
        if ok and row is not None:
            del taken[completion.activity_id]  # a repeated completion in the batch is not applied twice
            deliveries.append((row[1], row[2], encode_event(completion.event)))
    delivered: list[tuple[Any, ...]] = []
    if deliveries:
        delivered = await _all(
            tx.conn,
            Q.deliver_activity_results,
            {
                "taskhub": tx.taskhub,
                "instance_ids": [d[0] for d in deliveries],
                "execution_ids": [d[1] for d in deliveries],
                "events": [d[2] for d in deliveries],
                "terminal": TERMINAL_STATUS_VALUES,
            },
        )
        if delivered:
            tx.notify(ORCHESTRATIONS)
    return results, dict(delivered)


async def abandon_activity(tx: Tx, activity_id: int, token: str) -> None:
    params = {"taskhub": tx.taskhub, "id": activity_id, "token": token}
    if await _all(tx.conn, Q.release_activity_lease, params):
        tx.notify(ACTIVITIES)


async def renew_orchestration_lease(tx: Tx, instance_id: str, token: str, lease_seconds: float) -> bool:
    params = {
        "taskhub": tx.taskhub,
        "instance_id": instance_id,
        "token": token,
        "lease_seconds": float(lease_seconds),
    }
    ((renewed, _marked),) = await _all(tx.conn, Q.renew_instance_lease, params)
    return bool(renewed)


async def renew_activity_lease(tx: Tx, activity_id: int, token: str, lease_seconds: float) -> bool:
    params = {"taskhub": tx.taskhub, "id": activity_id, "token": token, "lease_seconds": float(lease_seconds)}
    return bool(await _all(tx.conn, Q.renew_activity_lease, params))
