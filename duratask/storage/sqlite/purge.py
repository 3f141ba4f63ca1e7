"""Purging instances: set-based deletes, and purges by filter in batches of their own transactions.

Each statement deletes the rows of a whole batch of instances (ids passed as one JSON array), so
a purge costs a handful of statements per batch rather than five per instance. A purge by filter
commits every ``PURGE_BATCH`` instances: other writers (workers committing episodes) get the
database between batches instead of waiting behind one long transaction, which for a purge of
100,000 instances would outlast their busy timeout.
"""

from __future__ import annotations

import json

from ...notify import instance_topic
from ..base import InstanceFilter
from .filters import TERMINAL_STATUS_VALUES, instance_conditions, select_instance_ids_sql
from .runner import Tx

#: Instances deleted per transaction by a purge by filter.
PURGE_BATCH = 5000

_IN_IDS = "taskhub = :taskhub AND instance_id IN (SELECT value FROM json_each(:instance_ids))"
_TERMINAL_AMONG = f"SELECT instance_id FROM instances WHERE {_IN_IDS} AND status IN (SELECT value FROM json_each(:terminal))"
#: What an instance owns first, the instance row last.
_DELETES = tuple(
    f"DELETE FROM {table} WHERE {_IN_IDS}" for table in ("history", "inbox", "activities", "instances")
)


def _delete_all(tx: Tx, instance_ids: list[str]) -> None:
    if not instance_ids:
        return
    params = {"taskhub": tx.taskhub, "instance_ids": json.dumps(instance_ids)}
    for statement in _DELETES:
        tx.conn.execute(statement, params)
    tx.notify(*(instance_topic(instance_id) for instance_id in instance_ids))


def delete_instances(tx: Tx, instance_ids: list[str]) -> int:
    """Delete the terminal ones among ``instance_ids`` with all they own; returns how many."""
    if not instance_ids:
        return 0
    params = {
        "taskhub": tx.taskhub,
        "instance_ids": json.dumps(list(dict.fromkeys(instance_ids))),
        "terminal": TERMINAL_STATUS_VALUES,
    }
    terminal = [instance_id for (instance_id,) in tx.conn.execute(_TERMINAL_AMONG, params)]
    _delete_all(tx, terminal)
    return len(terminal)


def delete_matching_batch(tx: Tx, filter: InstanceFilter, batch: int) -> int:
    """Delete up to ``batch`` terminal instances matching ``filter``; returns how many."""
    where, params = instance_conditions(tx.taskhub, filter, terminal_only=True)
    params["batch"] = batch
    found = tx.conn.execute(f"{select_instance_ids_sql(where)} LIMIT :batch", params)
    instance_ids = [instance_id for (instance_id,) in found]
    _delete_all(tx, instance_ids)
    return len(instance_ids)
