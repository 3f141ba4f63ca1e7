"""PostgreSQL storage: one database holding any number of task hubs, shared by many processes and machines.

Workers lease with ``FOR UPDATE SKIP LOCKED`` and are fenced against the database clock; commits
wake other processes through LISTEN/NOTIFY. The schema lives in numbered ``migrations/*.sql``
(applied at open, or by ``migrate(url)``) and the statements in ``queries.sql``.
"""

from ...errors import SchemaVersionError
from .migrations import migrate
from .storage import PostgresStorage, open_postgres_storage

__all__ = ["PostgresStorage", "SchemaVersionError", "migrate", "open_postgres_storage"]
