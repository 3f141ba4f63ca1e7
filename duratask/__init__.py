"""duratask: durable orchestrations in Python, self-hosted.

Write orchestrators and activities as plain Python, run them with a ``Worker``, manage instances
with a ``DurableTaskClient``; state lives in SQLite (default), PostgreSQL, or behind a Durable
Task scheduler server reached with an ``Endpoint=...`` connection string.
"""

from .client import DurableTaskClient
from .errors import (
    ConnectionStringError,
    DurableTaskError,
    InstanceStateError,
    InvalidInstanceIdError,
    LeaseLostError,
    NonDeterminismError,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    PayloadTooLargeError,
    RemoteCallError,
    SchedulerUnavailableError,
    SchemaVersionError,
    SerializationError,
    TaskFailedError,
    TaskHubNotFoundError,
    UnauthenticatedError,
)
from .models import (
    OrchestrationMetadata,
    OrchestrationQuery,
    OrchestrationQueryResult,
    OrchestrationRuntimeStatus,
    PurgeInstancesFilter,
    PurgeResult,
    StartOrchestrationOptions,
    TaskFailureDetails,
)
from .orchestration import OrchestrationContext, RetryPolicy, Task, when_all, when_any
from .sync import SyncDurableTaskClient
from .worker import ActivityContext, Worker

__version__ = "0.1.0"

__all__ = [
    "ActivityContext",
    "ConnectionStringError",
    "DurableTaskClient",
    "DurableTaskError",
    "InstanceStateError",
    "InvalidInstanceIdError",
    "LeaseLostError",
    "NonDeterminismError",
    "OrchestrationAlreadyExistsError",
    "OrchestrationContext",
    "OrchestrationMetadata",
    "OrchestrationNotFoundError",
    "OrchestrationQuery",
    "OrchestrationQueryResult",
    "OrchestrationRuntimeStatus",
    "PayloadTooLargeError",
    "PurgeInstancesFilter",
    "PurgeResult",
    "RemoteCallError",
    "RetryPolicy",
    "SchedulerUnavailableError",
    "SchemaVersionError",
    "SerializationError",
    "StartOrchestrationOptions",
    "SyncDurableTaskClient",
    "Task",
    "TaskFailedError",
    "TaskFailureDetails",
    "TaskHubNotFoundError",
    "UnauthenticatedError",
    "Worker",
    "__version__",
    "when_all",
    "when_any",
]
