"""Numbered schema migrations (``migrations/NNNN_name.sql``) and the version check at open.

The version is the highest row of ``duratask_schema``. Migrating takes a transaction-scoped
advisory lock first, so processes that start together wait for one another and then find the work
done; each migration runs in that one transaction (PostgreSQL DDL is transactional), so a failed
migration leaves the database as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from ...errors import SchemaVersionError
from .db import Connection, connect
from .sql import Q

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")

#: pg_advisory_xact_lock key of duratask's migrations ("duratask" as a big-endian 64-bit integer).
MIGRATION_LOCK_KEY = int.from_bytes(b"duratask", "big")


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


def latest_version(migrations: list[Migration]) -> int:
    return migrations[-1].version if migrations else 0


def _newer_error(where: str, current: int, latest: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"{where} has duratask schema version {current}, but this duratask knows versions up to {latest}: "
        "it was migrated by a newer duratask; upgrade duratask to use it"
    )


async def schema_version(conn: Connection) -> int:
    """The database's schema version; 0 when duratask never migrated it."""
    cur = await conn.execute(Q.schema_table_exists)
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute(Q.schema_version)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate_connection(conn: Connection, migrations: list[Migration], where: str) -> int:
    """Apply the pending migrations in one transaction; returns the schema version."""
    latest = latest_version(migrations)
    async with conn.transaction():
        await conn.execute(Q.lock_schema, {"key": MIGRATION_LOCK_KEY})
        await conn.execute(Q.create_schema_table)
        current = await schema_version(conn)
        if current > latest:
            raise _newer_error(where, current, latest)
        for migration in migrations[current:]:
            await conn.execute(migration.sql.encode())  # a script: several statements, no parameters
            await conn.execute(Q.record_migration, {"version": migration.version, "name": migration.name})
    return max(current, latest)


async def check_version(conn: Connection, migrations: list[Migration], where: str) -> int:
    """For ``migrate=False``: the schema must be exactly this duratask's."""
    latest = latest_version(migrations)
    current = await schema_version(conn)
    if current > latest:
        raise _newer_error(where, current, latest)
    if current < latest:
        raise SchemaVersionError(
            f"{where} has duratask schema version {current}, but this duratask needs version {latest}. "
            "Run `duratask migrate` against it, or open the storage with migrate=True "
            "(connection string option migrate=true)"
        )
    return current


async def migrate(url: str) -> int:
    """Bring the database at ``url`` to this duratask's schema; returns the version (for ``duratask migrate``)."""
    conn = await connect(url)
    try:
        return await migrate_connection(conn, load_migrations(), where=describe(url))
    finally:
        await conn.close()


def describe(url: str) -> str:
    """The database a URL names, for messages (never the password)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the PostgreSQL database"
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    return f"PostgreSQL database {info.get('dbname') or info.get('user') or '?'!s} at {host}:{port}"
