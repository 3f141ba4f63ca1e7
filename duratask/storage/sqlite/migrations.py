"""Numbered schema migrations (``migrations/NNNN_name.sql``), applied in order when a storage opens."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

from ...errors import SchemaVersionError
from .sql import Q

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The packaged migrations, in version order; versions must run 1, 2, 3... without gaps."""
    folder = resources.files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return checked_sequence(found)


def checked_sequence(migrations: list[Migration]) -> list[Migration]:
    ordered = sorted(migrations, key=lambda m: m.version)
    versions = [m.version for m in ordered]
    if versions != list(range(1, len(ordered) + 1)):
        raise ValueError(f"migration versions must be 1..n without gaps or repeats, got {versions}")
    return ordered


def split_statements(script: str) -> list[str]:
    """Cut a script into complete statements (SQLite decides where one ends, strings included)."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statement = pending.strip()
            if _has_code(statement):
                statements.append(statement)
            pending = ""
    if _has_code(pending):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {pending.strip()[:80]!r}")
    return statements


def _has_code(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def migrate(conn: sqlite3.Connection, migrations: list[Migration], now_micros: int, where: str) -> int:
    """Apply the pending migrations in one write transaction; returns the schema version.

    Taking the write lock before reading the version makes concurrent openers (other processes)
    wait, then find the work done. ``where`` names the database in errors.
    """
    latest = migrations[-1].version if migrations else 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(Q.create_schema_table)
        current: int = conn.execute(Q.schema_version).fetchone()[0]
        if current > latest:
            raise SchemaVersionError(
                f"{where} has schema version {current}, but this duratask knows versions up to {latest}: "
                "it was written by a newer duratask; upgrade duratask to open it"
            )
        for migration in migrations[current:]:
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                Q.record_migration,
                {"version": migration.version, "name": migration.name, "applied_at": now_micros},
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return max(current, latest)
