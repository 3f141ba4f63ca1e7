"""The exception tree of duratask.

Every error duratask raises on purpose derives from ``DurableTaskError``::

    DurableTaskError
    ├── ConnectionStringError          a connection string that cannot be used
    ├── OrchestrationNotFoundError     an operation named an instance that does not exist
    ├── OrchestrationAlreadyExistsError   scheduling an id whose instance is still running
    ├── TaskFailedError                an activity or sub-orchestration failed (raised in orchestrators)
    ├── NonDeterminismError            replay diverged from the recorded history
    ├── PayloadTooLargeError           an input, output or event payload over the configured limit
    ├── SerializationError             a value that JSON cannot hold (also a ``TypeError``)
    ├── InvalidInstanceIdError         an empty, over-long or malformed instance id (also a ``ValueError``)
    ├── InstanceStateError             an operation the instance's state does not allow (e.g. raising an
    │                                  event to a finished instance, purging a running one)
    ├── LeaseLostError                 a completion whose lease expired or was taken over
    ├── SchemaVersionError             the database schema is newer than this code, or not migrated
    ├── UnauthenticatedError           the server refused the credentials
    └── RemoteCallError                a call to a scheduler server failed (``Endpoint=...``)
        ├── SchedulerUnavailableError  the server cannot be reached (also a ``ConnectionError``)
        └── TaskHubNotFoundError       the server does not serve that task hub (also a ``LookupError``)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import TaskFailureDetails


class DurableTaskError(Exception):
    """Base class of every error duratask raises on purpose."""


class ConnectionStringError(DurableTaskError, ValueError):
    """A connection string is malformed, has an unknown scheme, or a missing/unknown key."""


class OrchestrationNotFoundError(DurableTaskError, KeyError):
    """No orchestration instance with the given id exists."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"orchestration instance {instance_id!r} not found")
        self.instance_id = instance_id

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class OrchestrationAlreadyExistsError(DurableTaskError):
    """An instance with this id exists and has not reached a terminal status."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"orchestration instance {instance_id!r} already exists and is not finished")
        self.instance_id = instance_id


class TaskFailedError(DurableTaskError):
    """An activity or sub-orchestration failed; ``details`` says how."""

    def __init__(self, message: str, details: TaskFailureDetails) -> None:
        super().__init__(message)
        self.details = details


class NonDeterminismError(DurableTaskError):
    """The orchestrator did something different from what its history records."""


class PayloadTooLargeError(DurableTaskError, ValueError):
    """A serialized payload is larger than the configured limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class SerializationError(DurableTaskError, TypeError):
    """A value cannot be converted to or from JSON."""


class InvalidInstanceIdError(DurableTaskError, ValueError):
    """An instance id is empty, too long, or contains forbidden characters."""


class InstanceStateError(DurableTaskError):
    """The operation is not allowed in the instance's current state."""


class LeaseLostError(DurableTaskError):
    """The lease on a work item expired or was taken by another worker before completion."""


class UnauthenticatedError(DurableTaskError, PermissionError):
    """The scheduler refused the request's credentials."""


class SchemaVersionError(DurableTaskError, RuntimeError):
    """The database's schema is not the one this duratask expects: newer, or not migrated yet."""


class RemoteCallError(DurableTaskError):
    """A call to the scheduler failed in a way no more specific duratask error describes."""

    def __init__(self, message: str, code: Any = None) -> None:
        super().__init__(message)
        #: The ``grpc.StatusCode`` of the failed call, when there was one.
        self.code = code


class SchedulerUnavailableError(RemoteCallError, ConnectionError):
    """The scheduler cannot be reached: not running, wrong address, or the network is down."""


class TaskHubNotFoundError(RemoteCallError, LookupError):
    """The scheduler does not serve the task hub the connection string names."""
