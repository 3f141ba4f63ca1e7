"""``DurableTaskClient``: start, query, signal and manage orchestration instances (SPEC §2)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from .backend.api import Backend
from .connection import open_backend
from .history import HistoryEvent
from .models import (
    OrchestrationMetadata,
    OrchestrationQuery,
    OrchestrationQueryResult,
    PurgeInstancesFilter,
    PurgeResult,
    StartOrchestrationOptions,
)
from .orchestration.context import name_of
from .serialization import to_json


class DurableTaskClient:
    """Manages orchestration instances on the task hub a connection string names.

    ``connection_string`` is ``sqlite:///path.db``, ``memory://``, ``postgresql://...`` or
    ``Endpoint=...;TaskHub=...;Authentication=...``; ``None`` reads ``DURATASK_CONNECTION_STRING``,
    else uses ``sqlite:///duratask.db``. ``backend`` replaces the string with an opened Backend
    (tests, embedding; the client then does not close it). Use
    ``async with DurableTaskClient(...) as client:``, or call ``close()``; the connection opens
    lazily on first use.
    """

    def __init__(self, connection_string: str | None = None, *, backend: Backend | None = None) -> None:
        self._connection_string = connection_string
        self._backend = backend
        self._owns_backend = backend is None

    async def _b(self) -> Backend:
        if self._backend is None:
            self._backend = await open_backend(self._connection_string)
        return self._backend

    async def __aenter__(self) -> Self:
        await self._b()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the connection (the storage stays open while others in the process use it)."""
        if self._backend is not None and self._owns_backend:
            await self._backend.close()
        self._backend = None

    async def schedule_new_orchestration_instance(
        self,
        orchestrator: str | Callable[..., Any],
        input: Any = None,
        options: StartOrchestrationOptions | None = None,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
    ) -> str:
        """Start an instance of ``orchestrator`` (a name or a registered function); returns its id.

        A new random id is used unless one is given (here or in ``options``). ``start_at`` in the
        future keeps the instance PENDING until then. Raises ``OrchestrationAlreadyExistsError`` if an
        unfinished instance has the id; a finished one is replaced.
        """
        if instance_id is None:
            instance_id = (
                options.instance_id if options and options.instance_id is not None else uuid.uuid4().hex
            )
        if start_at is None and options is not None:
            start_at = options.start_at
        if start_at is not None and start_at.tzinfo is None:
            start_at = start_at.replace(tzinfo=UTC)
        backend = await self._b()
        return await backend.start_orchestration(
            name_of(orchestrator), instance_id, to_json(input), start_at=start_at
        )

    async def get_instance(
        self, instance_id: str, get_inputs_and_outputs: bool = False
    ) -> OrchestrationMetadata | None:
        """The instance's metadata, or ``None`` if it does not exist."""
        return await (await self._b()).get_instance(instance_id, get_inputs_and_outputs)

    async def wait_for_instance_start(
        self, instance_id: str, get_inputs_and_outputs: bool = False, *, timeout: float | None = None
    ) -> OrchestrationMetadata | None:
        """Wait until the instance leaves PENDING; ``TimeoutError`` after ``timeout`` seconds.

        Returns its metadata, or ``None`` if it does not exist (or was purged meanwhile).
        """
        backend = await self._b()
        return await backend.wait_for_instance(instance_id, "start", get_inputs_and_outputs, timeout)

    async def wait_for_instance_completion(
        self, instance_id: str, get_inputs_and_outputs: bool = False, *, timeout: float | None = None
    ) -> OrchestrationMetadata | None:
        """Wait until the instance is COMPLETED, FAILED, TERMINATED or CANCELED.

        Returns its metadata, or ``None`` if it does not exist (or was purged meanwhile); raises
        ``TimeoutError`` after ``timeout`` seconds (``None``: no limit).
        """
        backend = await self._b()
        return await backend.wait_for_instance(instance_id, "completion", get_inputs_and_outputs, timeout)

    async def get_all_instances(self, query: OrchestrationQuery | None = None) -> OrchestrationQueryResult:
        """One page of instances matching ``query``, ordered by creation time then id."""
        return await (await self._b()).query_instances(query or OrchestrationQuery())

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        """Queue an external event for the instance (event names match case-insensitively).

        Raises ``OrchestrationNotFoundError`` for an unknown instance, ``InstanceStateError`` for
        a finished one.
        """
        await (await self._b()).raise_event(instance_id, event_name, to_json(event_data))

    async def terminate_instance(
        self, instance_id: str, output: Any = None, *, recursive: bool = True
    ) -> None:
        """Terminate the instance with ``output`` (and, if ``recursive``, its sub-orchestrations).

        The request is queued and takes effect at the instance's next episode; a finished instance
        is left as is. Raises ``OrchestrationNotFoundError`` for an unknown instance.
        """
        await (await self._b()).terminate(instance_id, to_json(output), recursive)

    async def suspend_instance(self, instance_id: str, reason: str | None = None) -> None:
        """Pause the instance: events and timers wait until it is resumed; ``reason`` goes to history.

        Raises ``OrchestrationNotFoundError`` for an unknown instance, ``InstanceStateError`` for
        a finished one.
        """
        await (await self._b()).suspend(instance_id, reason)

    async def resume_instance(self, instance_id: str, reason: str | None = None) -> None:
        """Resume a suspended instance; what waited is applied in order. ``reason`` goes to history.

        Raises ``OrchestrationNotFoundError`` for an unknown instance, ``InstanceStateError`` for
        a finished one.
        """
        await (await self._b()).resume(instance_id, reason)

    async def purge_instance(self, instance_id: str, *, recursive: bool = True) -> PurgeResult:
        """Delete a finished instance with its history (and its finished sub-orchestrations').

        ``recursive=False`` leaves the sub-orchestrations. Raises ``InstanceStateError`` if the
        instance has not finished, ``OrchestrationNotFoundError`` if it does not exist.
        """
        return PurgeResult(await (await self._b()).purge(instance_id, recursive))

    async def purge_all_instances(self, filter: PurgeInstancesFilter) -> PurgeResult:
        """Delete every finished instance matching ``filter`` (an empty filter: all of them)."""
        return PurgeResult(await (await self._b()).purge_matching(filter))

    async def get_orchestration_history(self, instance_id: str) -> list[HistoryEvent]:
        """The instance's history events (``duratask.history``), oldest first.

        Raises ``OrchestrationNotFoundError`` for an unknown instance.
        """
        return await (await self._b()).get_history(instance_id)
