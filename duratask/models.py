"""Public value types of the client surface: statuses, metadata, queries, filters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import msgspec

T = TypeVar("T")


class OrchestrationRuntimeStatus(enum.Enum):
    """Runtime status of an orchestration instance (values match the protocol's enum)."""

    RUNNING = 0
    COMPLETED = 1
    CONTINUED_AS_NEW = 2
    FAILED = 3
    CANCELED = 4
    TERMINATED = 5
    PENDING = 6
    SUSPENDED = 7

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED, CANCELED and TERMINATED: the instance will not change again."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        OrchestrationRuntimeStatus.COMPLETED,
        OrchestrationRuntimeStatus.FAILED,
        OrchestrationRuntimeStatus.CANCELED,
        OrchestrationRuntimeStatus.TERMINATED,
    }
)
TERMINAL_STATUSES = _TERMINAL


class TaskFailureDetails(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Why a task or an orchestration failed.

    ``error_type`` is the exception's qualified type name (``ValueError``, ``myapp.CardDeclined``),
    ``error_message`` its ``str()``, ``stack_trace`` the formatted traceback, ``inner_failure``
    the failure that caused this one (set when the exception was itself a ``TaskFailedError``).
    ``is_non_retriable`` marks a failure that retry policies must not retry (set by schedulers
    and other SDKs; duratask's own worker leaves it false).
    """

    error_type: str
    error_message: str
    stack_trace: str | None = None
    inner_failure: TaskFailureDetails | None = None
    is_non_retriable: bool = False


@dataclass(frozen=True)
class StartOrchestrationOptions:
    """Options of ``schedule_new_orchestration_instance``: the instance id (default: a new random
    one) and a start time (``start_at`` in the future keeps the instance PENDING until then)."""

    instance_id: str | None = None
    start_at: datetime | None = None


@dataclass(frozen=True)
class OrchestrationMetadata:
    """The state of one orchestration instance, as the client sees it.

    The ``serialized_*`` fields are ``None`` unless the caller asked for inputs and outputs.
    """

    instance_id: str
    name: str
    runtime_status: OrchestrationRuntimeStatus
    created_at: datetime
    last_updated_at: datetime
    serialized_input: str | None = None
    serialized_output: str | None = None
    serialized_custom_status: str | None = None
    failure_details: TaskFailureDetails | None = None
    parent_instance_id: str | None = None

    def read_input_as(self, type_: type[T]) -> T | None:
        """Decode the input as ``type_`` (a dataclass, pydantic model, datetime, ...).

        ``None`` when there is no input, or it was not fetched (``get_inputs_and_outputs=False``).
        """
        return _decode(self.serialized_input, type_)

    def read_output_as(self, type_: type[T]) -> T | None:
        """Decode the output as ``type_``; ``None`` when there is none or it was not fetched."""
        return _decode(self.serialized_output, type_)

    def read_custom_status_as(self, type_: type[T]) -> T | None:
        """Decode the custom status as ``type_``; ``None`` when there is none or it was not fetched."""
        return _decode(self.serialized_custom_status, type_)


def _decode(text: str | None, type_: type[T]) -> T | None:
    from .serialization import from_json

    if text is None:
        return None
    value: T = from_json(text, type_)
    return value


@dataclass(frozen=True)
class OrchestrationQuery:
    """Filters of ``get_all_instances``; all given filters must hold.

    Results are ordered by creation time, then instance id. ``continuation_token`` is the opaque
    token of the previous page's result, ``None`` for the first page.
    """

    runtime_status: list[OrchestrationRuntimeStatus] | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    instance_id_prefix: str | None = None
    task_hub_names: list[str] | None = None
    page_size: int = 100
    continuation_token: str | None = None


@dataclass(frozen=True)
class OrchestrationQueryResult:
    """One page of instances; ``continuation_token`` is ``None`` on the last page."""

    instances: list[OrchestrationMetadata] = field(default_factory=list)
    continuation_token: str | None = None


@dataclass(frozen=True)
class PurgeInstancesFilter:
    """Which terminal instances ``purge_all_instances`` removes; all given filters must hold.

    Times are inclusive bounds on the creation time. An empty filter matches every terminal instance.
    """

    created_from: datetime | None = None
    created_to: datetime | None = None
    runtime_status: list[OrchestrationRuntimeStatus] | None = None


@dataclass(frozen=True)
class PurgeResult:
    """How many instances a purge removed."""

    purged_instance_count: int


def status_from_name(name: str) -> OrchestrationRuntimeStatus:
    """Parse a status name, case-insensitively (``"running"``, ``"COMPLETED"``)."""
    try:
        return OrchestrationRuntimeStatus[name.strip().upper()]
    except KeyError:
        valid = ", ".join(s.name for s in OrchestrationRuntimeStatus)
        raise ValueError(f"unknown runtime status {name!r}; expected one of {valid}") from None
