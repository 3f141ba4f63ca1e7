"""The named SQL statements of ``queries.sql``, loaded once and checked against the names the code uses."""

from __future__ import annotations

import re
from importlib import resources

from .rows import INSTANCE_COLUMNS

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


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

    create_schema_table: str
    schema_version: str
    record_migration: str
    get_instance: str
    instance_status: str
    insert_instance: str
    update_instance_and_release: str
    update_instance_identity: str
    delete_instance_row: str
    delete_idle_instance: str
    delete_instance_history: str
    delete_instance_inbox: str
    delete_instance_activities: str
    child_instance_ids: str
    get_history: str
    history_lengths: str
    insert_history: str
    insert_message: str
    insert_message_if_instance_exists: str
    any_visible_messages: str
    next_visible_at: str
    orchestration_candidates: str
    candidates_in_range: str
    take_instance_lease: str
    mark_messages: str
    leased_instances: str
    leased_messages: str
    instance_leases: str
    consume_messages: str
    renew_instance_lease: str
    release_instance_lease: str
    unmark_messages: str
    insert_activity: str
    lease_activities: str
    activity_lease: str
    delete_activity: str
    renew_activity_lease: str
    release_activity_lease: str

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
    text = text.replace("{instance_columns}", ", ".join(INSTANCE_COLUMNS))
    return Queries(parse_named_statements(text))


Q = load_queries()
