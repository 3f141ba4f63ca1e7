"""Export and import of whole instances (``Storage.export_instances`` / ``import_instances``) on SQLite.

Functions over a ``Tx`` on the connection thread, as in ``ops``; the statements are in
``transfer.sql`` (plus the insert and delete statements of ``queries.sql``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from importlib import resources
from typing import Any

from ...history import decode_event, encode_event
from ...notify import ACTIVITIES, inbox_topics, instance_topic
from ..base import ImportConflictError, InstanceDump, PendingActivity, PendingMessage
from ..dumps import checked_ids
from .rows import INSTANCE_COLUMNS, from_micros, instance_from_row, instance_params, to_micros
from .runner import Tx
from .sql import Q, parse_named_statements


class TransferQueries:
    """One attribute per statement of ``transfer.sql``; loading fails if the two disagree."""

    first_instances: str
    instances_after: str
    history_of_range: str
    inbox_of_range: str
    activities_of_range: str
    existing_instance_ids: str
    import_activity: str

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
    return TransferQueries(
        parse_named_statements(text.replace("{instance_columns}", ", ".join(INSTANCE_COLUMNS)))
    )


TQ = load_queries()


# --- export ------------------------------------------------------------------------------------


def export_instances(tx: Tx, after: str | None, limit: int) -> list[InstanceDump]:
    """One page, read in one transaction (a consistent snapshot of every instance on it)."""
    if limit <= 0:
        return []
    conn = tx.conn
    conn.execute("BEGIN")  # a deferred read transaction: the snapshot starts at the first SELECT
    try:
        return _read_page(tx, after, limit)
    finally:
        conn.execute("COMMIT")


def _read_page(tx: Tx, after: str | None, limit: int) -> list[InstanceDump]:
    conn, taskhub = tx.conn, tx.taskhub
    if after is None:
        rows = conn.execute(TQ.first_instances, {"taskhub": taskhub, "limit": limit}).fetchall()
    else:
        rows = conn.execute(
            TQ.instances_after, {"taskhub": taskhub, "after": after, "limit": limit}
        ).fetchall()
    dumps = {row[0]: InstanceDump(instance=instance_from_row(row)) for row in rows}
    if not dumps:
        return []
    span = {"taskhub": taskhub, "first": rows[0][0], "last": rows[-1][0]}
    for instance_id, event in conn.execute(TQ.history_of_range, span):
        dumps[instance_id].history.append(decode_event(event))
    for instance_id, visible_at, event in conn.execute(TQ.inbox_of_range, span):
        dumps[instance_id].inbox.append(
            PendingMessage(visible_at=from_micros(visible_at), event=decode_event(event))
        )
    for instance_id, execution_id, task_id, name, input_, version, created_at, attempt in conn.execute(
        TQ.activities_of_range, span
    ):
        dumps[instance_id].activities.append(
            PendingActivity(
                execution_id=execution_id,
                task_id=task_id,
                name=name,
                input=input_,
                version=version,
                created_at=from_micros(created_at),
                attempt=attempt,
            )
        )
    return list(dumps.values())


# --- import ------------------------------------------------------------------------------------


def import_instances(tx: Tx, dumps: list[InstanceDump], replace: bool) -> int:
    """Create every dumped instance, or none (the caller's savepoint undoes a raise)."""
    if not dumps:
        return 0
    conn, taskhub = tx.conn, tx.taskhub
    ids = checked_ids(dumps)
    existing = [
        instance_id
        for (instance_id,) in conn.execute(
            TQ.existing_instance_ids, {"taskhub": taskhub, "instance_ids": json.dumps(ids)}
        )
    ]
    if existing and not replace:
        raise ImportConflictError(existing)
    keys = [{"taskhub": taskhub, "instance_id": instance_id} for instance_id in existing]
    for statement in (
        Q.delete_instance_history,
        Q.delete_instance_inbox,
        Q.delete_instance_activities,
        Q.delete_instance_row,
    ):
        conn.executemany(statement, keys)

    conn.executemany(Q.insert_instance, [instance_params(taskhub, dump.instance) for dump in dumps])
    conn.executemany(Q.insert_history, _history_rows(taskhub, dumps))
    conn.executemany(Q.insert_message, _message_rows(taskhub, dumps))  # in order: ids keep arrival order
    conn.executemany(TQ.import_activity, _activity_rows(taskhub, dumps))

    if any(dump.inbox for dump in dumps):
        tx.notify(*inbox_topics(dump.instance.instance_id for dump in dumps if dump.inbox))
        tx.queued_for_later()  # timers among them, maybe
    if any(dump.activities for dump in dumps):
        tx.notify(ACTIVITIES)
    tx.notify(*(instance_topic(instance_id) for instance_id in existing))  # their waiters see a new state
    return len(dumps)


def _history_rows(taskhub: str, dumps: Iterable[InstanceDump]) -> Iterator[dict[str, Any]]:
    for dump in dumps:
        instance_id = dump.instance.instance_id
        for seq, event in enumerate(dump.history):
            yield {"taskhub": taskhub, "instance_id": instance_id, "seq": seq, "event": encode_event(event)}


def _message_rows(taskhub: str, dumps: Iterable[InstanceDump]) -> Iterator[dict[str, Any]]:
    for dump in dumps:
        instance_id = dump.instance.instance_id
        for message in dump.inbox:
            yield {
                "taskhub": taskhub,
                "instance_id": instance_id,
                "visible_at": to_micros(message.visible_at),
                "event": encode_event(message.event),
            }


def _activity_rows(taskhub: str, dumps: Iterable[InstanceDump]) -> Iterator[dict[str, Any]]:
    for dump in dumps:
        for activity in dump.activities:
            yield {
                "taskhub": taskhub,
                "instance_id": dump.instance.instance_id,
                "execution_id": activity.execution_id,
                "task_id": activity.task_id,
                "name": activity.name,
                "version": activity.version,
                "input": activity.input,
                "created_at": to_micros(activity.created_at),
                "attempt": activity.attempt,
            }
