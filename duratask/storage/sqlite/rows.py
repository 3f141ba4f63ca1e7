"""Conversions between storage values and rows: times as integer microseconds, records as columns."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from ...models import OrchestrationRuntimeStatus, TaskFailureDetails
from ..base import InstanceRecord

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

#: The columns ``instance_from_row`` reads, in order (also ``{instance_columns}`` in queries.sql).
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


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch. A naive datetime is taken as UTC (the seam speaks UTC only)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def seconds_to_micros(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _opt_micros(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


def _opt_datetime(micros: int | None) -> datetime | None:
    return None if micros is None else from_micros(micros)


def instance_params(taskhub: str, record: InstanceRecord) -> dict[str, Any]:
    """Named parameters of ``insert_instance`` / ``update_instance_and_release``."""
    return {
        "taskhub": taskhub,
        "instance_id": record.instance_id,
        "name": record.name,
        "execution_id": record.execution_id,
        "status": record.status.value,
        "created_at": to_micros(record.created_at),
        "last_updated_at": to_micros(record.last_updated_at),
        "input": record.input,
        "output": record.output,
        "custom_status": record.custom_status,
        "failure": None if record.failure is None else _encoder.encode(record.failure),
        "version": record.version,
        "parent_instance_id": record.parent_instance_id,
        "parent_task_id": record.parent_task_id,
        "scheduled_start": _opt_micros(record.scheduled_start),
        "completed_at": _opt_micros(record.completed_at),
    }


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
        created_at=from_micros(created_at),
        last_updated_at=from_micros(last_updated_at),
        input=input_,
        output=output,
        custom_status=custom_status,
        failure=None if failure is None else _failure_decoder.decode(failure),
        version=version,
        parent_instance_id=parent_instance_id,
        parent_task_id=parent_task_id,
        scheduled_start=_opt_datetime(scheduled_start),
        completed_at=_opt_datetime(completed_at),
    )
