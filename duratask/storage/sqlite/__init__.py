"""SQLite storage: one file (or memory) holding any number of task hubs.

One thread per storage owns the connection (WAL mode, ``BEGIN IMMEDIATE`` writes, group commit);
several processes may share a file. The schema lives in numbered ``migrations/*.sql`` and the
statements in ``queries.sql``.
"""

from ...errors import SchemaVersionError
from .storage import SqliteStorage, open_sqlite_storage

__all__ = ["SchemaVersionError", "SqliteStorage", "open_sqlite_storage"]
