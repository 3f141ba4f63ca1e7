"""The storage (not a backend) a connection string names, for tools that work on the database itself:
``duratask migrate``, ``duratask export`` and ``duratask import``.

Only files and servers qualify: ``memory://`` lives and dies inside one process, and an
``Endpoint=`` scheduler keeps its storage to itself (point the tool at the server's ``--storage``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..connection import EmbeddedTarget, RemoteTarget, parse, resolve
from ..errors import ConnectionStringError
from .base import Storage


@dataclass(frozen=True)
class SchemaMigration:
    """What ``migrate_database`` did: the schema version before and after, and the newest known."""

    database: str
    before: int
    after: int
    latest: int


def database_target(connection_string: str | None, purpose: str) -> EmbeddedTarget:
    """The SQLite or PostgreSQL database of ``connection_string``; ``ConnectionStringError`` for other forms.

    ``purpose`` completes the error message: "duratask export works on ...".
    """
    target = parse(resolve(connection_string))
    if isinstance(target, RemoteTarget):
        raise ConnectionStringError(
            f"{purpose} works on a database (sqlite:///FILE or postgresql://...), not on a scheduler server "
            f"(Endpoint={target.address}): use the connection string of the server's --storage"
        )
    if target.scheme == "memory":
        raise ConnectionStringError(
            f"{purpose} works on a database that outlives one process (sqlite:///FILE or postgresql://...); "
            "memory:// exists only inside the process that opened it"
        )
    return target


def _flag(target: EmbeddedTarget, option: str, default: bool = True) -> bool:
    value = target.options.get(option)
    return default if value is None else value.lower() not in ("false", "0", "no", "off")


async def open_database_storage(target: EmbeddedTarget) -> Storage:
    """Open the storage of ``target``'s task hub (migrated at open unless the string says migrate=false)."""
    migrate = _flag(target, "migrate")
    if target.scheme == "postgresql":
        from .postgres import open_postgres_storage

        return await open_postgres_storage(target.location, target.taskhub, migrate=migrate)
    from .sqlite import open_sqlite_storage

    return await open_sqlite_storage(
        target.location, target.taskhub, _flag(target, "durable"), migrate=migrate
    )


async def migrate_database(target: EmbeddedTarget) -> SchemaMigration:
    """Bring the database of ``target`` to this duratask's schema (whatever its migrate option says)."""
    if target.scheme == "postgresql":
        from .postgres.db import connect
        from .postgres.migrations import (
            describe,
            latest_version,
            load_migrations,
            migrate_connection,
            schema_version,
        )

        migrations = load_migrations()
        where = describe(target.location)
        conn = await connect(target.location)
        try:
            before = await schema_version(conn)
            after = await migrate_connection(conn, migrations, where)
        finally:
            await conn.close()
        return SchemaMigration(where, before, after, latest_version(migrations))
    from .sqlite.schema import describe as describe_file
    from .sqlite.schema import migrate_file

    before, after, latest = await asyncio.to_thread(migrate_file, target.location)
    return SchemaMigration(describe_file(target.location), before, after, latest)
