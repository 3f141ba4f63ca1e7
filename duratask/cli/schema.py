"""``duratask migrate``: bring a database's schema to this duratask's version."""

from __future__ import annotations

import asyncio

from ..storage.connect import SchemaMigration, database_target, migrate_database
from . import render
from .app import AsJson, Connection, app


@app.command(rich_help_panel="Database")
def migrate(connection: Connection = None, as_json: AsJson = False) -> None:
    """Apply pending schema migrations to a SQLite or PostgreSQL database and print its schema version.

    Storages migrate when they open, unless the connection string says migrate=false: then run this
    once per upgrade, before starting the new version's processes. A database written by a newer
    duratask is refused, never changed.
    """
    target = database_target(connection, "duratask migrate")
    with render.err().status("Migrating…"):
        done = asyncio.run(migrate_database(target))
    if as_json:
        render.emit_json(
            {"database": done.database, "before": done.before, "after": done.after, "latest": done.latest}
        )
    else:
        print(_summary(done))


def _summary(done: SchemaMigration) -> str:
    if done.before == done.after:
        return f"{done.database}: schema version {done.after}, up to date."
    return f"{done.database}: schema version {done.before} -> {done.after}, migrated."
