"""Export and import of whole instances (``Storage.export_instances`` / ``import_instances``) on PostgreSQL.

A page is read in one REPEATABLE READ transaction; a batch is imported in one transaction, every
table written by one statement over arrays (``unnest``), as group commits are. The statements are
in ``transfer.sql`` (plus the deletes of ``queries.sql``).
"""

from __future__ import annotations

from datetime import UTC
from importlib import resources
from typing import Any

from ...history import decode_event, encode_event
from ...notify import ACTIVITIES, ORCHESTRATIONS, instance_topic
from ..base import ImportConflictError, InstanceDump, PendingActivity, PendingMessage
from ..dumps import checked_ids
from .db import Connection, Tx
from .rows import instance_arrays, instance_from_row, utc
from .sql import INSTANCE_SELECT, Q, parse_named_statements


class TransferQueries:
    """One attribute per statement of ``transfer.sql``; loading fails if the two disagree."""

    snapshot: str
    first_instances: str
    instances_after: str
    history_of_range: str
    inbox_of_range: str
    activities_of_range: str
    lock_existing: str
    delete_instances: str
    insert_instances: str
    insert_history: str
    insert_inbox: str
    insert_activities: str

    def __init__(self, statements: dict[str, str]) -> None:
        expected = set(TransferQueries.__annotations__)
        if statements.keys() != expected:
            raise ValueError(
                f"transfer.sql and TransferQueries disagree on {sorted(statements.keys() ^ expected)}"
            )
        for name, statement in statements.items():
            setattr(self, name, statement)


def load_queries() -> TransferQueries:
    text = resources.files(__package__).joinpath("transfer.sql").read_text(encoding="utf-8")
    return TransferQueries(parse_named_statements(text.replace("{instance_columns}", INSTANCE_SELECT)))


TQ = load_queries()


async def _rows(conn: Connection, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


# --- export ------------------------------------------------------------------------------------


async def export_instances(
    conn: Connection, taskhub: str, after: str | None, limit: int
) -> list[InstanceDump]:
    """One page, read in one snapshot (consistent for every instance on it)."""
    if limit <= 0:
        return []
    async with conn.transaction():
        await conn.execute(TQ.snapshot)
        if after is None:
            rows = await _rows(conn, TQ.first_instances, {"taskhub": taskhub, "limit": limit})
        else:
            rows = await _rows(conn, TQ.instances_after, {"taskhub": taskhub, "after": after, "limit": limit})
        if not rows:
            return []
        dumps = {row[0]: InstanceDump(instance=instance_from_row(row)) for row in rows}
        span = {"taskhub": taskhub, "first": rows[0][0], "last": rows[-1][0]}
        for instance_id, event in await _rows(conn, TQ.history_of_range, span):
            dumps[instance_id].history.append(decode_event(event))
        for instance_id, visible_at, event in await _rows(conn, TQ.inbox_of_range, span):
            dumps[instance_id].inbox.append(
                PendingMessage(visible_at=visible_at.astimezone(UTC), event=decode_event(event))
            )
        for instance_id, execution_id, task_id, name, input_, version, created_at, attempt in await _rows(
            conn, TQ.activities_of_range, span
        ):
            dumps[instance_id].activities.append(
                PendingActivity(
                    execution_id=execution_id,
                    task_id=task_id,
                    name=name,
                    input=input_,
                    version=version,
                    created_at=created_at.astimezone(UTC),
                    attempt=attempt,
                )
            )
    return list(dumps.values())


# --- import ------------------------------------------------------------------------------------


async def import_instances(tx: Tx, dumps: list[InstanceDump], replace: bool) -> int:
    """Create every dumped instance, or raise (and the transaction creates none)."""
    if not dumps:
        return 0
    conn, taskhub = tx.conn, tx.taskhub
    ids = checked_ids(dumps)
    existing = [
        row[0] for row in await _rows(conn, TQ.lock_existing, {"taskhub": taskhub, "instance_ids": ids})
    ]
    if existing and not replace:
        raise ImportConflictError(existing)
    if existing:
        owned = {"taskhub": taskhub, "instance_ids": existing}
        for statement in (
            Q.delete_history_of,
            Q.delete_inbox_of,
            Q.delete_activities_of,
            TQ.delete_instances,
        ):
            await conn.execute(statement, owned)

    created = {row[0] for row in await _rows(conn, TQ.insert_instances, _instance_arrays(taskhub, dumps))}
    if len(created) < len(ids):  # created by someone else since lock_existing
        raise ImportConflictError([instance_id for instance_id in ids if instance_id not in created])
    history = _history_arrays(dumps)
    if history["seqs"]:
        await conn.execute(TQ.insert_history, {"taskhub": taskhub, **history})
    inbox = _inbox_arrays(dumps)
    if inbox["events"]:
        await conn.execute(TQ.insert_inbox, {"taskhub": taskhub, **inbox})
        tx.notify(ORCHESTRATIONS)
    activities = _activity_arrays(dumps)
    if activities["task_ids"]:
        await conn.execute(TQ.insert_activities, {"taskhub": taskhub, **activities})
        tx.notify(ACTIVITIES)
    tx.notify(*(instance_topic(instance_id) for instance_id in existing))  # their waiters see a new state
    return len(dumps)


def _instance_arrays(taskhub: str, dumps: list[InstanceDump]) -> dict[str, Any]:
    arrays = instance_arrays(taskhub, (dump.instance for dump in dumps))
    arrays["history_lengths"] = [len(dump.history) for dump in dumps]
    return arrays


def _history_arrays(dumps: list[InstanceDump]) -> dict[str, list[Any]]:
    arrays: dict[str, list[Any]] = {"instance_ids": [], "seqs": [], "events": []}
    for dump in dumps:
        for seq, event in enumerate(dump.history):
            arrays["instance_ids"].append(dump.instance.instance_id)
            arrays["seqs"].append(seq)
            arrays["events"].append(encode_event(event))
    return arrays


def _inbox_arrays(dumps: list[InstanceDump]) -> dict[str, list[Any]]:
    arrays: dict[str, list[Any]] = {"instance_ids": [], "visible_ats": [], "events": []}
    for dump in dumps:
        for message in dump.inbox:
            arrays["instance_ids"].append(dump.instance.instance_id)
            arrays["visible_ats"].append(utc(message.visible_at))
            arrays["events"].append(encode_event(message.event))
    return arrays


def _activity_arrays(dumps: list[InstanceDump]) -> dict[str, list[Any]]:
    arrays: dict[str, list[Any]] = {
        name: []
        for name in (
            "instance_ids",
            "execution_ids",
            "task_ids",
            "names",
            "versions",
            "inputs",
            "created_ats",
            "attempts",
        )
    }
    for dump in dumps:
        for activity in dump.activities:
            arrays["instance_ids"].append(dump.instance.instance_id)
            arrays["execution_ids"].append(activity.execution_id)
            arrays["task_ids"].append(activity.task_id)
            arrays["names"].append(activity.name)
            arrays["versions"].append(activity.version)
            arrays["inputs"].append(activity.input)
            arrays["created_ats"].append(utc(activity.created_at))
            arrays["attempts"].append(activity.attempt)
    return arrays
