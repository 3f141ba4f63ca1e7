"""Row shapes both storages share (each storage's own encodings stay in its ``rows.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .base import ActivityLease, ActivityTask


def activity_lease(row: Sequence[Any], expires_at: datetime) -> ActivityLease:
    """The lease of a leased activity row: (id, lease token, instance id, execution id, task id,
    name, input, version, attempt). The expiry comes apart: each storage has its own time type
    (SQLite's microseconds, PostgreSQL's timestamps), and SQLite knows it without reading it back."""
    activity_id, token, instance_id, execution_id, task_id, name, input_, version, attempt = row
    return ActivityLease(
        activity_id=activity_id,
        token=token,
        expires_at=expires_at,
        task=ActivityTask(
            instance_id=instance_id,
            execution_id=execution_id,
            task_id=task_id,
            name=name,
            input=input_,
            version=version,
        ),
        attempt=attempt,
    )
