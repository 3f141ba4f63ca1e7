"""Conversions between storage values and PostgreSQL rows (times are timestamptz, read back in UTC)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from ...models import OrchestrationRuntimeStatus, TaskFailureDetails
from ..base import InstanceRecord

#: The columns ``instance_from_row`` reads, in order; ``{instance_columns}`` in queries.sql expands
#: to them, qualified by the alias ``i``.
INSTANCE_COLUMNS = (
    "instance_id",
    "name",
    "execution_id",
    "status",
    "created_at",
    "last_updated_at",
    "input",
    "output",
    "custom_status",
    "failure",
    "version",
    "parent_instance_id",
    "parent_task_id",
    "scheduled_start",
    "completed_at",
)

_failure_decoder = msgspec.json.Decoder(TaskFailureDetails)
_encoder = msgspec.json.Encoder()


def utc(moment: datetime) -> datetime:
    """A naive datetime is taken as UTC (the seam speaks UTC only); an aware one is kept."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _opt_utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else utc(moment)


def _as_utc(moment: datetime | None) -> datetime | None:
    """Rows come back in the session's time zone (UTC); normalise the tzinfo object too."""
    return None if moment is None else moment.astimezone(UTC)


def instance_params(taskhub: str, record: InstanceRecord) -> dict[str, Any]:
    """An instance's column values by name (``instance_arrays`` makes the batch statements' arrays)."""
    return {
        "taskhub": taskhub,
        "instance_id": record.instance_id,
        "name": record.name,
        "execution_id": record.execution_id,
        "status": record.status.value,
        "created_at": utc(record.created_at),
        "last_updated_at": utc(record.last_updated_at),
        "input": record.input,
        "output": record.output,
        "custom_status": record.custom_status,
        "failure": None if record.failure is None else _encoder.encode(record.failure),
        "version": record.version,
        "parent_instance_id": record.parent_instance_id,
        "parent_task_id": record.parent_task_id,
        "scheduled_start": _opt_utc(record.scheduled_start),
        "completed_at": _opt_utc(record.completed_at),
    }


#: ``instance_params`` keys -> the array parameters of the statements that take many instances
#: at once (``unnest``): insert_instances, update_instances_and_release, transfer's insert_instances.
INSTANCE_ARRAYS = {
    "instance_id": "instance_ids",
    "name": "names",
    "execution_id": "execution_ids",
    "status": "statuses",
    "created_at": "created_ats",
    "last_updated_at": "last_updated_ats",
    "input": "inputs",
    "output": "outputs",
    "custom_status": "custom_statuses",
    "failure": "failures",
    "version": "versions",
    "parent_instance_id": "parent_instance_ids",
    "parent_task_id": "parent_task_ids",
    "scheduled_start": "scheduled_starts",
    "completed_at": "completed_ats",
}


def instance_arrays(taskhub: str, records: Iterable[InstanceRecord]) -> dict[str, Any]:
    """The records as one array parameter per column (``INSTANCE_ARRAYS``), plus ``taskhub``."""
    arrays: dict[str, Any] = {name: [] for name in INSTANCE_ARRAYS.values()}
    for record in records:
        params = instance_params(taskhub, record)
        for column, name in INSTANCE_ARRAYS.items():
            arrays[name].append(params[column])
    arrays["taskhub"] = taskhub
    return arrays


def instance_from_row(row: Sequence[Any]) -> InstanceRecord:
    """Read the leading ``INSTANCE_COLUMNS`` of a row (extra trailing columns are ignored)."""
    (
        instance_id,
        name,
        execution_id,
        status,
        created_at,
        last_updated_at,
        input_,
        output,
        custom_status,
        failure,
        version,
        parent_instance_id,
        parent_task_id,
        scheduled_start,
        completed_at,
    ) = row[: len(INSTANCE_COLUMNS)]
    return InstanceRecord(
        instance_id=instance_id,
        name=name,
        execution_id=execution_id,
        status=OrchestrationRuntimeStatus(status),
        created_at=created_at.astimezone(UTC),
        last_updated_at=last_updated_at.astimezone(UTC),
        input=input_,
        output=output,
        custom_status=custom_status,
        failure=None if failure is None else _failure_decoder.decode(failure),
        version=version,
        parent_instance_id=parent_instance_id,
        parent_task_id=parent_task_id,
        scheduled_start=_as_utc(scheduled_start),
        completed_at=_as_utc(completed_at),
    )
