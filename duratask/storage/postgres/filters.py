"""``InstanceFilter`` and ``PageCursor`` as SQL over the instances table.

Statements are composed from fixed fragments, never from values: values travel as parameters.
Only the given filters appear in the SQL (rather than ``(%(x)s IS NULL OR ...)``), so the planner
sees plain ranges that the indexes serve.
"""

from __future__ import annotations

from typing import Any

from ...models import TERMINAL_STATUSES, OrchestrationRuntimeStatus
from ..base import InstanceFilter, PageCursor
from .rows import utc
from .sql import INSTANCE_SELECT

_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)

TERMINAL_STATUS_VALUES = sorted(status.value for status in TERMINAL_STATUSES)


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``; ``None`` if none exists.

    Instance ids use the "C" collation (code point order), so ``prefix <= id < bound`` selects
    exactly the ids starting with ``prefix``: no wildcard characters, and the primary key serves it.
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
    filter: InstanceFilter, after: PageCursor | None = None
) -> tuple[list[str], dict[str, Any]]:
    """WHERE conditions on alias ``i`` (status excepted: see ``status_values``) and their parameters."""
    clauses = ["i.taskhub = %(taskhub)s"]
    params: dict[str, Any] = {}
    if filter.created_from is not None:
        clauses.append("i.created_at >= %(created_from)s")
        params["created_from"] = utc(filter.created_from)
    if filter.created_to is not None:
        clauses.append("i.created_at <= %(created_to)s")
        params["created_to"] = utc(filter.created_to)
    if filter.instance_id_prefix:
        clauses.append("i.instance_id >= %(prefix)s")
        params["prefix"] = filter.instance_id_prefix
        bound = prefix_upper_bound(filter.instance_id_prefix)
        if bound is not None:
            clauses.append("i.instance_id < %(prefix_bound)s")
            params["prefix_bound"] = bound
    if after is not None:
        clauses.append(
            "(i.created_at, i.instance_id) > (%(after_created_at)s::timestamptz, %(after_instance_id)s)"
        )
        params["after_created_at"] = utc(after.created_at)
        params["after_instance_id"] = after.instance_id
    return clauses, params


def status_values(
    statuses: list[OrchestrationRuntimeStatus] | None, *, terminal_only: bool = False
) -> list[int] | None:
    """The status values to match (``None``: any). An empty list from the caller is no filter."""
    values = sorted({status.value for status in statuses}) if statuses else None
    if terminal_only:
        values = [v for v in (values or TERMINAL_STATUS_VALUES) if v in TERMINAL_STATUS_VALUES]
    return values


def select_instances(
    taskhub: str, filter: InstanceFilter, limit: int, after: PageCursor | None
) -> tuple[str, dict[str, Any]]:
    """One page of instances ordered by (created_at, instance_id).

    With a status filter, each status is an ordered index scan of its own, stopped at ``limit``,
    and the scans are merged: a page costs ``limit`` rows per status however many instances match.
    """
    clauses, params = instance_conditions(filter, after)
    params.update(taskhub=taskhub, limit=limit)
    statuses = status_values(filter.statuses)
    page = "ORDER BY i.created_at, i.instance_id LIMIT %(limit)s"
    if statuses is None:
        return (
            f"SELECT {INSTANCE_SELECT} FROM duratask_instances AS i WHERE {' AND '.join(clauses)} {page}",
            params,
        )
    params["statuses"] = statuses
    clauses.append("i.status = s.status")
    sql = (
        f"SELECT i.* FROM unnest(%(statuses)s::smallint[]) AS s(status) CROSS JOIN LATERAL ("
        f"SELECT {INSTANCE_SELECT} FROM duratask_instances AS i WHERE {' AND '.join(clauses)} {page}"
        f") AS i {page}"
    )
    return sql, params


def select_purgeable_ids(taskhub: str, filter: InstanceFilter, batch: int) -> tuple[str, dict[str, Any]]:
    """Up to ``batch`` ids of terminal instances matching ``filter``, locked for deletion."""
    clauses, params = instance_conditions(filter)
    clauses.append("i.status = ANY(%(statuses)s::smallint[])")
    params.update(taskhub=taskhub, batch=batch, statuses=status_values(filter.statuses, terminal_only=True))
    sql = (
        f"SELECT i.instance_id FROM duratask_instances AS i WHERE {' AND '.join(clauses)} "
        "LIMIT %(batch)s FOR UPDATE"
    )
    return sql, params
