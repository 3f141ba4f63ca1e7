"""The Backend API over the Durable Task gRPC protocol: ``RemoteBackend`` and its errors."""

from ...errors import RemoteCallError, SchedulerUnavailableError, TaskHubNotFoundError
from .backend import RemoteBackend

__all__ = ["RemoteBackend", "RemoteCallError", "SchedulerUnavailableError", "TaskHubNotFoundError"]
