"""The storage operations as plain functions over a ``Tx``; each runs inside one transaction
(or one savepoint of a coalesced transaction) on the connection thread."""

from __future__ import annotations

import json
import os
from datetime import datetime

from ...errors import OrchestrationAlreadyExistsError
from ...history import HistoryEvent, decode_event, encode_event
from ...models import OrchestrationRuntimeStatus
from ...notify import ACTIVITIES, inbox_topics, instance_topic
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
from .paging import query_page
from .rows import from_micros, instance_from_row, instance_params, seconds_to_micros, to_micros
from .runner import Tx
from .sql import Q

# --- instances -------------------------------------------------------------------------------


def get_instance(tx: Tx, instance_id: str) -> InstanceRecord | None:
    row = tx.conn.execute(Q.get_instance, {"taskhub": tx.taskhub, "instance_id": instance_id}).fetchone()
    return None if row is None else instance_from_row(row)


def query_instances(
    tx: Tx, filter: InstanceFilter, limit: int, after: PageCursor | None
) -> list[InstanceRecord]:
    return query_page(tx, filter, limit, after)


def get_history(tx: Tx, instance_id: str) -> list[HistoryEvent]:
    rows = tx.conn.execute(Q.get_history, {"taskhub": tx.taskhub, "instance_id": instance_id})
    return [decode_event(event) for (event,) in rows]


def child_instance_ids(tx: Tx, instance_id: str) -> list[str]:
    rows = tx.conn.execute(Q.child_instance_ids, {"taskhub": tx.taskhub, "instance_id": instance_id})
    return [child for (child,) in rows]


def next_visible_at(tx: Tx) -> datetime | None:
    (micros,) = tx.conn.execute(Q.next_visible_at, {"taskhub": tx.taskhub, "now": tx.now}).fetchone()
    return None if micros is None else from_micros(micros)


def create_instance(tx: Tx, new: NewInstance) -> None:
    if not _create(tx, new):
        raise OrchestrationAlreadyExistsError(new.record.instance_id)


def _create(tx: Tx, new: NewInstance) -> bool:
    """Create ``new`` (replacing a terminal instance of that id); ``False`` if an unfinished one exists."""
    instance_id = new.record.instance_id
    existing = _status(tx, instance_id)
    if existing is not None:
        if not existing.is_terminal:
            return False
        _delete_instance_data(tx, instance_id)
    tx.conn.execute(Q.insert_instance, instance_params(tx.taskhub, new.record))
    visible_at = to_micros(new.visible_at)
    tx.conn.execute(
        Q.insert_message,
        {
            "taskhub": tx.taskhub,
            "instance_id": instance_id,
            "visible_at": visible_at,
            "event": encode_event(new.started),
        },
    )
    if visible_at > tx.now:
        tx.queued_for_later()
    tx.notify(*inbox_topics((instance_id,)), instance_topic(instance_id))
    return True


def _status(tx: Tx, instance_id: str) -> OrchestrationRuntimeStatus | None:
    row = tx.conn.execute(Q.instance_status, {"taskhub": tx.taskhub, "instance_id": instance_id}).fetchone()
    return None if row is None else OrchestrationRuntimeStatus(row[0])


def _delete_instance_data(tx: Tx, instance_id: str) -> None:
    key = {"taskhub": tx.taskhub, "instance_id": instance_id}
    for statement in (
        Q.delete_instance_history,
        Q.delete_instance_inbox,
        Q.delete_instance_activities,
        Q.delete_instance_row,
    ):
        tx.conn.execute(statement, key)


def enqueue(tx: Tx, messages: list[InboxMessage]) -> None:
    if _insert_messages(tx, messages):
        tx.notify(*inbox_topics(message.instance_id for message in messages))


def _insert_messages(tx: Tx, messages: list[InboxMessage]) -> bool:
    """Append to existing instances' inboxes; returns whether there was anything to append."""
    visible_at = [to_micros(message.visible_at) for message in messages]
    tx.conn.executemany(
        Q.insert_message_if_instance_exists,
        [
            {
                "taskhub": tx.taskhub,
                "instance_id": message.instance_id,
                "visible_at": at,
                "event": encode_event(message.event),
            }
            for message, at in zip(messages, visible_at, strict=True)
        ],
    )
    if any(at > tx.now for at in visible_at):
        tx.queued_for_later()
    return bool(messages)


def delete_idle_instances(tx: Tx, instance_ids: list[str]) -> int:
    deleted = 0
    for instance_id in dict.fromkeys(instance_ids):
        key = {"taskhub": tx.taskhub, "instance_id": instance_id}
        if tx.conn.execute(Q.delete_idle_instance, {**key, "now": tx.now}).rowcount:
            tx.conn.execute(Q.delete_instance_history, key)
            tx.notify(instance_topic(instance_id))
            deleted += 1
    return deleted


# --- orchestration work items ----------------------------------------------------------------


def lease_orchestrations(
    tx: Tx,
    limit: int,
    lease_seconds: float,
    id_prefix: str | None = None,
    exclude_id_prefix: str | None = None,
) -> list[OrchestrationLease]:
    if limit <= 0:
        return []
    conn, taskhub, now = tx.conn, tx.taskhub, tx.now
    params: dict[str, object] = {
        "taskhub": taskhub,
        "now": now,
        "limit": limit,
        "exclude_id_prefix": exclude_id_prefix or None,
    }
    query = Q.orchestration_candidates
    if id_prefix:
        query = Q.candidates_in_range
        params["id_from"], params["id_to"] = prefix_range(id_prefix)
    candidates = [instance_id for (instance_id,) in conn.execute(query, params)]
    if not candidates:
        return []
    expires = now + seconds_to_micros(lease_seconds)
    tokens = dict(zip(candidates, _new_tokens(len(candidates))))
    leases = [
        {"taskhub": taskhub, "instance_id": instance_id, "token": token, "expires": expires, "now": now}
        for instance_id, token in tokens.items()
    ]
    conn.executemany(Q.take_instance_lease, leases)
    conn.executemany(Q.mark_messages, leases)

    batch = {"taskhub": taskhub, "instance_ids": json.dumps(candidates)}
    new_events: dict[str, list[HistoryEvent]] = {instance_id: [] for instance_id in candidates}
    for instance_id, event in conn.execute(Q.leased_messages, batch):
        new_events[instance_id].append(decode_event(event))
    lengths = dict(conn.execute(Q.history_lengths, batch).fetchall())
    records = {row[0]: instance_from_row(row) for row in conn.execute(Q.leased_instances, batch)}
    expires_at = from_micros(expires)
    return [
        OrchestrationLease(
            instance=records[instance_id],
            token=tokens[instance_id],
            expires_at=expires_at,
            new_events=new_events[instance_id],
            history_length=lengths.get(instance_id, 0),
        )
        for instance_id in candidates
    ]


def commit_orchestrations_then_lease_activities(
    tx: Tx, commits: list[OrchestrationCommit], limit: int, lease_seconds: float
) -> tuple[list[bool], list[ActivityLease]]:
    applied = commit_orchestrations(tx, commits)
    leases = lease_activities(tx, limit, lease_seconds)
    scheduled = {
        (task.instance_id, task.task_id)
        for commit, ok in zip(commits, applied)
        if ok
        for task in commit.activities
    }
    if scheduled <= {(lease.task.instance_id, lease.task.task_id) for lease in leases}:
        tx.topics.discard(ACTIVITIES)  # this caller took every activity it queued: wake nobody
    return applied, leases


def complete_activities_then_lease_orchestrations(
    tx: Tx,
    completions: list[ActivityCompletion],
    limit: int,
    lease_seconds: float,
    exclude_id_prefix: str | None,
) -> tuple[list[bool], list[OrchestrationLease]]:
    applied = complete_activities(tx, completions)
    leases = lease_orchestrations(tx, limit, lease_seconds, exclude_id_prefix=exclude_id_prefix)
    delivered = {completion.instance_id for completion, ok in zip(completions, applied) if ok}
    if delivered <= {lease.instance.instance_id for lease in leases}:
        # This caller leased every instance it delivered a result to: wake nobody for them.
        tx.topics.difference_update(inbox_topics(delivered))
    return applied, leases


def _new_tokens(count: int) -> list[str]:
    """``count`` random 128-bit lease tokens (hex), from one read of the OS random source."""
    pool = os.urandom(16 * count).hex()
    return [pool[start : start + 32] for start in range(0, len(pool), 32)]


def commit_orchestrations(tx: Tx, commits: list[OrchestrationCommit]) -> list[bool]:
    """Fence every commit, then apply the accepted ones stage by stage, each stage one statement
    over the whole batch (the cost of a batch is a handful of statements, not a handful per commit).

    The stages keep the order a single commit needs (own history and row, then consumed messages,
    activities, sub-orchestrations, then outgoing messages), so the batch has the effect of its
    commits applied one after another.
    """
    leases = _live_leases(tx, commits)
    accepted: list[bool] = []
    applied: list[OrchestrationCommit] = []
    renamed: list[OrchestrationCommit] = []
    for commit in commits:
        instance = commit.instance
        held = leases.pop((instance.instance_id, commit.token), None)  # a lease settles once
        accepted.append(held is not None)
        if held is not None:
            status, identity = held
            applied.append(commit)
            if identity != _identity(tx.taskhub, instance):
                renamed.append(commit)
            if status != instance.status.value:  # only status changes wake instance waiters
                tx.notify(instance_topic(instance.instance_id))
    if applied:
        _apply(tx, applied, renamed)
    return accepted


def _identity(taskhub: str, instance: InstanceRecord) -> tuple[object, ...]:
    params = instance_params(taskhub, instance)
    return tuple(params[column] for column in _IDENTITY_COLUMNS)


_IDENTITY_COLUMNS = ("name", "created_at", "parent_instance_id", "parent_task_id")


def _live_leases(
    tx: Tx, commits: list[OrchestrationCommit]
) -> dict[tuple[str, str], tuple[int, tuple[object, ...]]]:
    """(instance id, token) of each live lease among the commits' instances -> (status, identity columns)."""
    instance_ids = json.dumps(sorted({commit.instance.instance_id for commit in commits}))
    rows = tx.conn.execute(Q.instance_leases, {"taskhub": tx.taskhub, "instance_ids": instance_ids})
    return {
        (instance_id, token): (status, tuple(identity))
        for instance_id, token, expires, status, *identity in rows
        if token is not None and expires > tx.now
    }


def _apply(tx: Tx, commits: list[OrchestrationCommit], renamed: list[OrchestrationCommit]) -> None:
    conn, taskhub = tx.conn, tx.taskhub
    keys = [{"taskhub": taskhub, "instance_id": c.instance.instance_id, "token": c.token} for c in commits]
    instance_ids = json.dumps([c.instance.instance_id for c in commits])

    conn.executemany(Q.delete_instance_history, [key for key, c in zip(keys, commits) if c.reset_history])
    lengths = dict(
        conn.execute(Q.history_lengths, {"taskhub": taskhub, "instance_ids": instance_ids}).fetchall()
    )
    conn.executemany(
        Q.insert_history,
        [
            {
                "taskhub": taskhub,
                "instance_id": c.instance.instance_id,
                "seq": lengths.get(c.instance.instance_id, 0) + offset,
                "event": encode_event(event),
            }
            for c in commits
            for offset, event in enumerate(c.history_append)
        ],
    )
    conn.executemany(Q.update_instance_and_release, [instance_params(taskhub, c.instance) for c in commits])
    conn.executemany(Q.update_instance_identity, [instance_params(taskhub, c.instance) for c in renamed])
    conn.executemany(Q.consume_messages, keys)

    activities = [task for c in commits for task in c.activities]
    if activities:
        _insert_activities(tx, activities)
        tx.notify(ACTIVITIES)
    # Sub-orchestrations before messages: an event sent to a child created in the same episode
    # must find it.
    for new in (new for c in commits for new in c.new_instances):
        _create(tx, new)
    sent = [message for c in commits for message in c.messages]
    topics: set[str] = set()
    if _insert_messages(tx, sent):
        topics.update(inbox_topics(message.instance_id for message in sent))
    committed = inbox_topics(c.instance.instance_id for c in commits)
    if not topics.issuperset(committed) and _any_visible_messages(tx, instance_ids):
        # Also when messages that arrived during a lease wait: a worker that found the instance
        # leased went back to sleep.
        topics.update(committed)
    if topics:
        tx.notify(*topics)


def _insert_activities(tx: Tx, activities: list[ActivityTask]) -> None:
    tx.conn.executemany(
        Q.insert_activity,
        [
            {
                "taskhub": tx.taskhub,
                "instance_id": task.instance_id,
                "execution_id": task.execution_id,
                "task_id": task.task_id,
                "name": task.name,
                "version": task.version,
                "input": task.input,
                "created_at": tx.now,
            }
            for task in activities
        ],
    )


def _any_visible_messages(tx: Tx, instance_ids_json: str) -> bool:
    params = {"taskhub": tx.taskhub, "instance_ids": instance_ids_json, "now": tx.now}
    return bool(tx.conn.execute(Q.any_visible_messages, params).fetchone()[0])


def renew_orchestration_lease(tx: Tx, instance_id: str, token: str, lease_seconds: float) -> bool:
    params = _renewal(tx, token, lease_seconds, instance_id=instance_id)
    return bool(tx.conn.execute(Q.renew_instance_lease, params).rowcount)


def _renewal(tx: Tx, token: str, lease_seconds: float, **key: object) -> dict[str, object]:
    """Parameters of a lease renewal: the lease (``key`` and ``token``), now, the new expiry."""
    return {
        "taskhub": tx.taskhub,
        "token": token,
        "now": tx.now,
        "expires": tx.now + seconds_to_micros(lease_seconds),
        **key,
    }


def abandon_orchestration(tx: Tx, instance_id: str, token: str) -> None:
    params = {"taskhub": tx.taskhub, "instance_id": instance_id, "token": token}
    if tx.conn.execute(Q.release_instance_lease, params).rowcount:
        tx.conn.execute(Q.unmark_messages, params)
        tx.notify(*inbox_topics((instance_id,)))


# --- activity work items ---------------------------------------------------------------------


def lease_activities(tx: Tx, limit: int, lease_seconds: float) -> list[ActivityLease]:
    if limit <= 0:
        return []
    expires = tx.now + seconds_to_micros(lease_seconds)
    params = {"taskhub": tx.taskhub, "now": tx.now, "limit": limit, "expires": expires}
    rows = sorted(tx.conn.execute(Q.lease_activities, params).fetchall())
    expires_at = from_micros(expires)
    return [activity_lease(row, expires_at) for row in rows]


def complete_activities(tx: Tx, completions: list[ActivityCompletion]) -> list[bool]:
    return [_complete_activity(tx, completion) for completion in completions]


def _complete_activity(tx: Tx, completion: ActivityCompletion) -> bool:
    conn, taskhub = tx.conn, tx.taskhub
    activity = {"taskhub": taskhub, "id": completion.activity_id}
    row = conn.execute(Q.activity_lease, activity).fetchone()
    if row is None:
        return False
    token, expires, instance_id, execution_id = row
    if token != completion.token or expires <= tx.now:
        return False
    conn.execute(Q.delete_activity, activity)
    target = conn.execute(Q.instance_status, {"taskhub": taskhub, "instance_id": instance_id}).fetchone()
    if (
        target is not None
        and target[1] == execution_id
        and not OrchestrationRuntimeStatus(target[0]).is_terminal
    ):
        conn.execute(
            Q.insert_message,
            {
                "taskhub": taskhub,
                "instance_id": instance_id,
                "visible_at": tx.now,
                "event": encode_event(completion.event),
            },
        )
        tx.notify(*inbox_topics((instance_id,)))
    return True


def abandon_activity(tx: Tx, activity_id: int, token: str) -> None:
    params = {"taskhub": tx.taskhub, "id": activity_id, "token": token}
    if tx.conn.execute(Q.release_activity_lease, params).rowcount:
        tx.notify(ACTIVITIES)


def renew_activity_lease(tx: Tx, activity_id: int, token: str, lease_seconds: float) -> bool:
    params = _renewal(tx, token, lease_seconds, id=activity_id)
    return bool(tx.conn.execute(Q.renew_activity_lease, params).rowcount)
