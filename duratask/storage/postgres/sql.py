"""The named SQL statements of ``queries.sql``, loaded once and checked against the names the code uses."""

from __future__ import annotations

import re
from importlib import resources

from .rows import INSTANCE_COLUMNS

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)

#: ``{instance_columns}`` in queries.sql: the columns ``rows.instance_from_row`` reads, alias ``i``.
INSTANCE_SELECT = ", ".join(f"i.{column}" for column in INSTANCE_COLUMNS)
#: ``{instance_padding}``: NULLs for the instance columns after the first, in rows of a UNION that
#: carry only an instance id.
INSTANCE_PADDING = ", ".join(["NULL"] * (len(INSTANCE_COLUMNS) - 1))


def parse_named_statements(text: str) -> dict[str, str]:
    """Split ``-- name: X`` sections into ``{X: statement}``; comment lines are dropped."""
    parts = _HEADER.split(text)
    statements: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in statements:
            raise ValueError(f"statement {name!r} is defined twice")
        lines = [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("--")]
        statements[name] = "\n".join(lines).strip().rstrip(";")
    return statements


class Queries:
    """One attribute per statement; loading fails if the file and this list disagree."""

    lock_schema: str
    create_schema_table: str
    schema_table_exists: str
    schema_version: str
    record_migration: str
    get_instance: str
    lock_instance_statuses: str
    insert_instances: str
    update_instances_and_release: str
    delete_terminal_instances: str
    lock_instances_for_delete: str
    delete_idle_instances: str
    delete_history_of: str
    delete_inbox_of: str
    delete_activities_of: str
    child_instance_ids: str
    get_history: str
    insert_history: str
    insert_message: str
    insert_messages_if_instance_exists: str
    any_visible_message: str
    next_visible_at: str
    lease_orchestrations: str
    lock_live_leases: str
    consume_messages: str
    renew_instance_lease: str
    release_instance_lease: str
    unmark_messages: str
    insert_activities: str
    insert_activities_leasing_first: str
    lease_activities: str
    take_completed_activities: str
    deliver_activity_results: str
    renew_activity_lease: str
    release_activity_lease: str
    plan_by_index: str
    notify: str

    def __init__(self, statements: dict[str, str]) -> None:
        expected = set(Queries.__annotations__)
        if missing := expected - statements.keys():
            raise ValueError(f"queries.sql lacks {sorted(missing)}")
        if unknown := statements.keys() - expected:
            raise ValueError(f"queries.sql defines unused {sorted(unknown)}")
        for name, statement in statements.items():
            setattr(self, name, statement)


def load_queries() -> Queries:
    text = resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
    text = text.replace("{instance_columns}", INSTANCE_SELECT).replace("{instance_padding}", INSTANCE_PADDING)
    return Queries(parse_named_statements(text))


Q = load_queries()
