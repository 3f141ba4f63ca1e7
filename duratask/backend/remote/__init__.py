"""The Backend API over the Durable Task gRPC protocol: ``RemoteBackend`` and its errors."""

from .backend import RemoteBackend
from .errors import RemoteCallError, SchedulerUnavailableError, TaskHubNotFoundError

__all__ = ["RemoteBackend", "RemoteCallError", "SchedulerUnavailableError", "TaskHubNotFoundError"]
