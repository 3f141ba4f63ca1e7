"""The schema version of a SQLite database: read it, require it, or bring a file up to date.

``duratask migrate`` calls ``migrate_file``; a storage opened with ``migrate=False`` calls
``check_version`` instead of migrating.
"""

from __future__ import annotations

import sqlite3
import time

from ...errors import SchemaVersionError
from .migrations import Migration, load_migrations, migrate
from .sql import Q

#: Whether duratask ever migrated the database (a catalog lookup, so reading never creates a table).
_SCHEMA_TABLE_EXISTS = (
    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'duratask_schema')"
)

#: How long a connection waits for another's lock (another process's write) before giving up.
BUSY_TIMEOUT_MS = 30_000


def describe(path: str) -> str:
    return f"SQLite database {path!r}"


def schema_version(conn: sqlite3.Connection) -> int:
    """The database's schema version; 0 when duratask never migrated it."""
    if not conn.execute(_SCHEMA_TABLE_EXISTS).fetchone()[0]:
        return 0
    version: int = conn.execute(Q.schema_version).fetchone()[0]
    return version


def latest_version(migrations: list[Migration]) -> int:
    return migrations[-1].version if migrations else 0


def check_version(conn: sqlite3.Connection, migrations: list[Migration], where: str) -> int:
    """For a storage opened with ``migrate=False``: the schema must be exactly this duratask's."""
    latest, current = latest_version(migrations), schema_version(conn)
    if current > latest:
        raise SchemaVersionError(
            f"{where} has schema version {current}, but this duratask knows versions up to {latest}: "
            "it was written by a newer duratask; upgrade duratask to open it"
        )
    if current < latest:
        raise SchemaVersionError(
            f"{where} has duratask schema version {current}, but this duratask needs version {latest}. "
            "Run `duratask migrate` against it, or open it with migrate=True "
            "(connection string option migrate=true)"
        )
    return current


def migrate_file(path: str) -> tuple[int, int, int]:
    """Apply pending migrations to the database file ``path`` (created if missing).

    Returns (version before, version after, latest version this duratask knows). A database newer
    than this duratask raises ``SchemaVersionError`` and is left untouched.
    """
    migrations = load_migrations()
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.OperationalError as exc:
        raise sqlite3.OperationalError(f"cannot open the SQLite database {path!r}: {exc}") from exc
    try:
        conn.execute("PRAGMA journal_mode = WAL")  # as the storage opens it: readers never block the writer
        before = schema_version(conn)
        after = migrate(conn, migrations, time.time_ns() // 1000, where=describe(path))
        return before, after, latest_version(migrations)
    finally:
        conn.close()
