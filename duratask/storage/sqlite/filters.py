"""``InstanceFilter`` and ``PageCursor`` as SQL conditions on the instances table."""

from __future__ import annotations

import json
from typing import Any

from ...models import TERMINAL_STATUSES
from ..base import InstanceFilter, PageCursor
from .rows import INSTANCE_COLUMNS, to_micros

_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)

TERMINAL_STATUS_VALUES = json.dumps(sorted(status.value for status in TERMINAL_STATUSES))


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``; ``None`` if none exists.

    SQLite compares TEXT bytewise (UTF-8), which orders like code points, so
    ``prefix <= id < bound`` selects exactly the ids starting with ``prefix``: no wildcard characters,
    and the primary key index serves it.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < _MAX_CODE_POINT:
            successor = last + 1
            if successor in _SURROGATES:  # not encodable in UTF-8; the next code point after them
                successor = _SURROGATES.stop
            return "".join(chars) + chr(successor)
    return None


def instance_conditions(
    taskhub: str, filter: InstanceFilter, after: PageCursor | None = None, *, terminal_only: bool = False
) -> tuple[str, dict[str, Any]]:
    """A WHERE clause (without the keyword) and its parameters. An empty ``statuses`` list is no filter."""
    clauses = ["taskhub = :taskhub"]
    params: dict[str, Any] = {"taskhub": taskhub}
    if filter.statuses:
        clauses.append("status IN (SELECT value FROM json_each(:statuses))")
        params["statuses"] = json.dumps([status.value for status in filter.statuses])
    if terminal_only:
        clauses.append("status IN (SELECT value FROM json_each(:terminal))")
        params["terminal"] = TERMINAL_STATUS_VALUES
    if filter.created_from is not None:
        clauses.append("created_at >= :created_from")
        params["created_from"] = to_micros(filter.created_from)
    if filter.created_to is not None:
        clauses.append("created_at <= :created_to")
        params["created_to"] = to_micros(filter.created_to)
    if filter.instance_id_prefix:
        clauses.append("instance_id >= :prefix")
        params["prefix"] = filter.instance_id_prefix
        bound = prefix_upper_bound(filter.instance_id_prefix)
        if bound is not None:
            clauses.append("instance_id < :prefix_bound")
            params["prefix_bound"] = bound
    if after is not None:
        clauses.append("(created_at, instance_id) > (:after_created_at, :after_instance_id)")
        params["after_created_at"] = to_micros(after.created_at)
        params["after_instance_id"] = after.instance_id
    return " AND ".join(clauses), params


def select_instances_sql(where: str) -> str:
    return (
        f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM instances WHERE {where} "
        "ORDER BY created_at, instance_id LIMIT :limit"
    )


def select_instance_ids_sql(where: str) -> str:
    return f"SELECT instance_id FROM instances WHERE {where}"
