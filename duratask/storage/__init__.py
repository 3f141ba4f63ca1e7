"""Persistence behind the ``Storage`` seam (``base.py``): SQLite (``sqlite/``) and PostgreSQL (``postgres/``).

Implementations are imported from their own packages (``duratask.storage.sqlite``) so that using
one never imports another's driver.
"""

from .base import (
    ActivityCompletion,
    ActivityLease,
    ActivityTask,
    InboxMessage,
    InstanceFilter,
    InstanceRecord,
    NewInstance,
    OrchestrationCommit,
    OrchestrationLease,
    PageCursor,
    Storage,
)

__all__ = [
    "ActivityCompletion",
    "ActivityLease",
    "ActivityTask",
    "InboxMessage",
    "InstanceFilter",
    "InstanceRecord",
    "NewInstance",
    "OrchestrationCommit",
    "OrchestrationLease",
    "PageCursor",
    "Storage",
]
