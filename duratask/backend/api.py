"""The Backend seam: the one async API that the client, worker, CLI, dashboard and gRPC server call.

``LocalBackend`` (``backend/local.py``) implements it over a ``Storage`` and owns every decision;
``RemoteBackend`` (``backend/remote/``) implements it over the Durable Task gRPC protocol.
Payloads crossing this seam are JSON text (``str``) or ``None``: serialization happens above it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

import msgspec

from ..history import HistoryEvent, OrchestratorAction, TaskCompleted, TaskFailed
from ..models import (
    OrchestrationMetadata,
    OrchestrationQuery,
    OrchestrationQueryResult,
    PurgeInstancesFilter,
)


class OrchestrationWorkItem(msgspec.Struct, kw_only=True):
    """One episode to run: replay ``history`` (or a cached state of the same length), then apply
    ``new_events``. ``history`` is ``None`` when the backend expects the worker to use its cache
    and call ``get_history`` on a miss."""

    instance_id: str
    execution_id: str
    name: str
    token: str
    new_events: list[HistoryEvent]
    history_length: int
    history: list[HistoryEvent] | None = None


class OrchestrationResult(msgspec.Struct, kw_only=True):
    """What the worker's episode produced."""

    actions: list[OrchestratorAction]
    custom_status: str | None = None


class ActivityWorkItem(msgspec.Struct, kw_only=True):
    instance_id: str
    execution_id: str
    task_id: int
    name: str
    input: str | None
    token: str
    attempt: int = 1
    version: str | None = None


WorkKind = Literal["orchestration", "activity"]
WaitUntil = Literal["start", "completion"]


class Backend(Protocol):
    """Everything duratask can do to a task hub."""

    async def close(self) -> None: ...

    # --- client side ------------------------------------------------------------------------

    async def start_orchestration(
        self,
        name: str,
        instance_id: str,
        input: str | None,
        *,
        start_at: datetime | None = None,
        version: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str: ...

    async def get_instance(self, instance_id: str, with_payloads: bool) -> OrchestrationMetadata | None: ...

    async def wait_for_instance(
        self, instance_id: str, until: WaitUntil, with_payloads: bool, timeout: float | None
    ) -> OrchestrationMetadata | None:
        """Wait until the instance started (status not PENDING) or reached a terminal status.
        Raises ``TimeoutError`` after ``timeout`` seconds; returns ``None`` if it does not exist."""

    async def query_instances(self, query: OrchestrationQuery) -> OrchestrationQueryResult: ...

    async def raise_event(self, instance_id: str, name: str, data: str | None) -> None: ...

    async def terminate(self, instance_id: str, output: str | None, recursive: bool) -> None: ...

    async def suspend(self, instance_id: str, reason: str | None) -> None: ...

    async def resume(self, instance_id: str, reason: str | None) -> None: ...

    async def purge(self, instance_id: str, recursive: bool) -> int: ...

    async def purge_matching(self, filter: PurgeInstancesFilter) -> int: ...

    async def get_history(self, instance_id: str) -> list[HistoryEvent]: ...

    # --- worker side ------------------------------------------------------------------------

    async def lease_orchestrations(self, limit: int) -> list[OrchestrationWorkItem]: ...

    async def complete_orchestrations(
        self, done: list[tuple[OrchestrationWorkItem, OrchestrationResult]], *, lease_activities: int = 0
    ) -> list[bool]:
        """Apply each episode's actions (group commit); ``False`` where the lease was lost.

        With ``lease_activities=N`` the backend may also lease up to N activities right away (in the
        same transaction where the storage can): the next ``lease_activities`` hands them out first,
        and ``wait_for_work("activity")`` returns at once while it holds some."""

    async def abandon_orchestration(self, item: OrchestrationWorkItem) -> None: ...

    async def lease_activities(self, limit: int) -> list[ActivityWorkItem]: ...

    async def complete_activities(
        self, done: list[tuple[ActivityWorkItem, TaskCompleted | TaskFailed]], *, lease_orchestrations: int = 0
    ) -> list[bool]:
        """Deliver each result; ``False`` where the lease was lost. ``lease_orchestrations=N``: as
        ``lease_activities`` of ``complete_orchestrations``, for the orchestrations made ready."""

    async def release_prefetched(self) -> None:
        """Hand back work leased along with completions and not handed out yet."""

    async def abandon_activity(self, item: ActivityWorkItem) -> None: ...

    async def wait_for_work(self, kind: WorkKind, timeout: float) -> None:
        """Return when work of ``kind`` may be ready, or after ``timeout`` seconds."""
