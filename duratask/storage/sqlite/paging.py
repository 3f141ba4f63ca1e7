"""Pages of instances (``query_instances``) that stay fast with millions stored.

A page is ``limit`` instances in (created_at, instance_id) order. What makes that cheap depends
on the filter, so the plan is chosen here rather than left to SQLite's guesses (it keeps no
statistics unless ANALYZE runs, and guessed wrong by seconds on a million rows):

- With statuses, one ordered range scan of ``instances_by_status`` per status, each stopped at
  ``limit`` rows, merged (SQLite merges the ordered arms of a UNION ALL): a page costs about
  ``limit`` index entries per status, however many instances match.
- Without statuses, an ordered scan of ``instances_by_created``.
- An id prefix is tested on the index entries of those scans (both indexes hold instance_id),
  which suits a prefix that many instances share. A prefix that few share is better served by
  its range of the primary key, sorted: so the rows under the prefix are counted first, up to a
  bound, and under the bound that plan is used. The bound grows with the square root of the
  table, where the two plans cost about the same (sorting n rows against skipping
  limit * total / n index entries).
"""

from __future__ import annotations

import math
from typing import Any

from ..base import InstanceFilter, InstanceRecord, PageCursor
from .filters import instance_conditions, prefix_upper_bound
from .rows import INSTANCE_COLUMNS, instance_from_row
from .runner import Tx

_COLUMNS = ", ".join(INSTANCE_COLUMNS)
_ORDER = "ORDER BY created_at, instance_id"

#: Narrow-prefix bound = this factor * sqrt(rows in the table), at least _MIN_NARROW_BOUND.
_NARROW_FACTOR = 3.0
_MIN_NARROW_BOUND = 1000


def narrow_prefix_bound(table_rows: int) -> int:
    """Below this many instances under an id prefix, its key range sorted beats an ordered scan."""
    return max(_MIN_NARROW_BOUND, int(_NARROW_FACTOR * math.sqrt(max(table_rows, 0))))


def _prefix_is_narrow(tx: Tx, prefix: str) -> bool:
    # max(rowid) is a lookup at the end of the table's tree: an upper estimate of its size.
    (table_rows,) = tx.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM instances").fetchone()
    bound = narrow_prefix_bound(table_rows)
    params: dict[str, Any] = {"taskhub": tx.taskhub, "prefix": prefix, "bound": bound}
    upper = prefix_upper_bound(prefix)
    below = ""
    if upper is not None:
        below, params["prefix_bound"] = " AND instance_id < :prefix_bound", upper
    (count,) = tx.conn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM instances WHERE taskhub = :taskhub AND instance_id >= :prefix"
        f"{below} LIMIT :bound)",
        params,
    ).fetchone()
    return bool(count < bound)


def page_query(
    taskhub: str, filter: InstanceFilter, limit: int, after: PageCursor | None, *, narrow_prefix: bool
) -> tuple[str, dict[str, Any]]:
    """The SELECT of one page and its parameters (see the module's docstring for the plans)."""
    statuses = sorted({status.value for status in filter.statuses}) if filter.statuses else []
    if narrow_prefix or not statuses:
        where, params = instance_conditions(taskhub, filter, after)
        index = "" if narrow_prefix else " INDEXED BY instances_by_created"
        params["limit"] = limit
        return f"SELECT {_COLUMNS} FROM instances{index} WHERE {where} {_ORDER} LIMIT :limit", params
    unfiltered = InstanceFilter(
        created_from=filter.created_from,
        created_to=filter.created_to,
        instance_id_prefix=filter.instance_id_prefix,
    )
    where, params = instance_conditions(taskhub, unfiltered, after)
    params["limit"] = limit
    arms = []
    for number, status in enumerate(statuses):
        params[f"status_{number}"] = status
        arms.append(
            f"SELECT * FROM (SELECT {_COLUMNS} FROM instances INDEXED BY instances_by_status "
            f"WHERE {where} AND status = :status_{number} {_ORDER} LIMIT :limit)"
        )
    return f"{' UNION ALL '.join(arms)} {_ORDER} LIMIT :limit", params


def query_page(tx: Tx, filter: InstanceFilter, limit: int, after: PageCursor | None) -> list[InstanceRecord]:
    narrow = bool(filter.instance_id_prefix) and _prefix_is_narrow(tx, filter.instance_id_prefix or "")
    sql, params = page_query(tx.taskhub, filter, limit, after, narrow_prefix=narrow)
    return [instance_from_row(row) for row in tx.conn.execute(sql, params)]
