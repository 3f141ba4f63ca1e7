"""Orchestrations: the authoring API (context, tasks, retry policies) and the pure replay engine."""

from .context import OrchestrationContext
from .executor import EpisodeResult, OrchestrationExecutor
from .tasks import CompletableTask, RetryPolicy, Task, when_all, when_any

__all__ = [
    "CompletableTask",
    "EpisodeResult",
    "OrchestrationContext",
    "OrchestrationExecutor",
    "RetryPolicy",
    "Task",
    "when_all",
    "when_any",
]
