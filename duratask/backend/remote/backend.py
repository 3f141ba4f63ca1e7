"""``RemoteBackend``: the Backend API over the Durable Task gRPC protocol (``TaskHubSidecarService``).

It lets duratask's client and worker use any Durable Task scheduler: ``duratask serve``, the
Durable Task Scheduler (or its emulator), or another sidecar. It translates and never decides:
what an operation means is the scheduler's business, and its refusals come back as the errors the
embedded backend raises (``errors.py`` holds the one table). The few checks made here are on
arguments alone, where the protocol would read the mistake as something else (an empty instance
id means "pick one for me" to StartInstance).

Worker side: one ``GetWorkItems`` stream (``work_stream.py``) feeds the lease calls. Completions
the scheduler refuses (stale or unknown token) return ``False``, as a lost lease does embedded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc

from ... import history as h
from ...connection import RemoteTarget
from ...errors import OrchestrationNotFoundError, RemoteCallError
from ...models import (
    OrchestrationMetadata,
    OrchestrationQuery,
    OrchestrationQueryResult,
    PurgeInstancesFilter,
    TaskFailureDetails,
)
from ...models import OrchestrationRuntimeStatus as Status
from ...protocol import convert, pb, pb_grpc
from ..api import ActivityWorkItem, OrchestrationResult, OrchestrationWorkItem, WaitUntil, WorkKind
from ..local import validate_instance_id
from .channel import call_metadata, open_channel
from .errors import CallContext, error_from_rpc
from .work_stream import WorkItemStream

log = logging.getLogger("duratask.backend.remote")

#: Concurrency limits announced in ``GetWorkItemsRequest`` unless given (the Worker's defaults).
DEFAULT_MAX_CONCURRENT_WORK_ITEMS = 200
# A wait without a timeout is a series of long polls of this length: some schedulers cap how long
# one call may wait, and a fresh call also notices a connection that died silently.
LONG_POLL_SECONDS = 60.0
# How long close() spends handing back work items it holds before it closes the channel.
ABANDON_ON_CLOSE_SECONDS = 2.0
# Entity work items (which duratask does not run) go back after this pause, so that a scheduler
# that re-delivers them to this worker at once is not drawn into a busy loop.
ENTITY_HANDBACK_DELAY_SECONDS = 1.0
# Completion refusals that mean "this work item is no longer yours": the result is not applied.
_REFUSED = frozenset(
    {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}
)
# A result too large for the scheduler (or the channel) would be refused again on every
# re-delivery, forever: the work item is completed once more as a failure that says why, as the
# embedded backend fails an instance whose result it cannot store. (Any other refusal returns
# False: duratask serve, for one, answers INVALID_ARGUMENT to a worker whose replay is out of step
# with the history, and a fresh replay on re-delivery is the cure.)
_RESULT_REFUSED: dict[Any, str] = {grpc.StatusCode.RESOURCE_EXHAUSTED: "duratask.PayloadTooLargeError"}

_Leased = tuple[WorkKind, str, str, int]  # kind, completion token, instance id, task id (-1: none)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RemoteBackend:
    """The Backend API (``backend.api.Backend``) against a scheduler reached over gRPC."""

    def __init__(
        self,
        target: RemoteTarget,
        channel: Any,
        *,
        max_concurrent_orchestrations: int = DEFAULT_MAX_CONCURRENT_WORK_ITEMS,
        max_concurrent_activities: int = DEFAULT_MAX_CONCURRENT_WORK_ITEMS,
    ) -> None:
        self.target = target
        self._channel = channel
        self._stub: Any = pb_grpc.TaskHubSidecarServiceStub(channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self._metadata = call_metadata(target)
        self._work_request = pb.GetWorkItemsRequest(
            maxConcurrentOrchestrationWorkItems=max_concurrent_orchestrations,
            maxConcurrentActivityWorkItems=max_concurrent_activities,
            # Histories that come without their past events are fetched (StreamInstanceHistory).
            capabilities=[pb.WORKER_CAPABILITY_HISTORY_STREAMING],
            worker_instance_id=_worker_id(),
        )
        self._stream = WorkItemStream(self._open_work_stream, self._hand_back_entity_item)
        self._leased: set[_Leased] = set()
        # The history each leased orchestration came with, still in protocol form: converted only
        # if the worker's cache misses and it asks (get_history). Instance id -> (token, events).
        self._held_histories: dict[str, tuple[str, Sequence[Any]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._warned_entities = False

    @classmethod
    async def connect(cls, target: RemoteTarget, **options: int) -> RemoteBackend:
        """A backend for ``target`` on the running event loop. Nothing is sent until the first call:
        an unreachable scheduler shows as ``SchedulerUnavailableError`` then."""
        return cls(target, open_channel(target), **options)

    async def close(self) -> None:
        """Stop receiving work, hand back work items still held (briefly), close the channel."""
        queued = await self._stream.close()
        handbacks = [self._abandon_message(message) for message in queued]
        handbacks += [self._abandon_leased(leased) for leased in self._leased]
        self._leased.clear()
        self._held_histories.clear()
        pending = [asyncio.ensure_future(handback) for handback in handbacks]
        if pending:
            await asyncio.wait(pending, timeout=ABANDON_ON_CLOSE_SECONDS)
        stragglers = [*pending, *self._background]
        for task in stragglers:
            task.cancel()
        await asyncio.gather(*stragglers, return_exceptions=True)
        await self._channel.close()

    # --- calls ----------------------------------------------------------------------------------

    async def _call(
        self, rpc: Any, request: Any, *, instance_id: str | None = None, timeout: float | None = None
    ) -> Any:
        """One unary call with the task hub's metadata; a failure becomes a duratask error."""
        try:
            return await rpc(request, metadata=self._metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, CallContext(self.target.address, instance_id)) from exc
        except grpc.aio.UsageError as exc:
            raise self._closed_error() from exc

    def _closed_error(self) -> RemoteCallError:
        return RemoteCallError(f"the connection to the scheduler at {self.target.address} is closed")

    async def _history_messages(self, instance_id: str, *, for_work_item: bool = False) -> list[Any]:
        request = pb.StreamInstanceHistoryRequest(instanceId=instance_id, forWorkItemProcessing=for_work_item)
        events: list[Any] = []
        try:
            async for chunk in self._stub.StreamInstanceHistory(request, metadata=self._metadata):
                events.extend(chunk.events)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, CallContext(self.target.address, instance_id)) from exc
        except grpc.aio.UsageError as exc:
            raise self._closed_error() from exc
        return events

    # --- client side ------------------------------------------------------------------------------

    async def start_orchestration(
        self,
        name: str,
        instance_id: str,
        input: str | None,
        *,
        start_at: datetime | None = None,
        version: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        validate_instance_id(instance_id)
        if not name:
            raise ValueError("orchestrator name must be a non-empty string")
        if start_at is not None and start_at.tzinfo is None:
            start_at = start_at.replace(tzinfo=UTC)
        request = convert.start_request_to_pb(
            convert.StartRequest(name, instance_id, input, start_at=start_at, version=version, tags=tags)
        )
        response = await self._call(self._stub.StartInstance, request, instance_id=instance_id)
        return str(response.instanceId or instance_id)

    async def get_instance(self, instance_id: str, with_payloads: bool) -> OrchestrationMetadata | None:
        request = pb.GetInstanceRequest(instanceId=instance_id, getInputsAndOutputs=with_payloads)
        try:
            response = await self._call(self._stub.GetInstance, request, instance_id=instance_id)
        except OrchestrationNotFoundError:  # some schedulers answer NOT_FOUND rather than exists=false
            return None
        return convert.instance_response_from_pb(response)

    async def wait_for_instance(
        self, instance_id: str, until: WaitUntil, with_payloads: bool, timeout: float | None
    ) -> OrchestrationMetadata | None:
        rpc = self._stub.WaitForInstanceStart if until == "start" else self._stub.WaitForInstanceCompletion
        request = pb.GetInstanceRequest(instanceId=instance_id, getInputsAndOutputs=with_payloads)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            poll = LONG_POLL_SECONDS if remaining is None else min(remaining, LONG_POLL_SECONDS)
            try:
                response = await self._call(rpc, request, instance_id=instance_id, timeout=poll)
            except OrchestrationNotFoundError:
                return None
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline - 0.001:
                    return await self._settle_wait_timeout(instance_id, until, with_payloads, timeout)
                continue  # one long poll ran out, not the caller's time: ask again
            return convert.instance_response_from_pb(response)

    async def _settle_wait_timeout(
        self, instance_id: str, until: WaitUntil, with_payloads: bool, timeout: float | None
    ) -> OrchestrationMetadata | None:
        """The wait ran out. Some schedulers wait out the deadline even for an unknown instance, or
        answer just too late: look once, so that the outcome is the embedded backend's."""
        metadata = await self.get_instance(instance_id, with_payloads)
        if metadata is None or _reached(metadata.runtime_status, until):
            return metadata
        raise TimeoutError(f"instance {instance_id!r} did not reach {until} within {timeout} s")

    async def query_instances(self, query: OrchestrationQuery) -> OrchestrationQueryResult:
        if query.page_size <= 0:
            raise ValueError("page_size must be positive")
        request = pb.QueryInstancesRequest(query=convert.query_to_pb(query))
        return convert.query_result_from_pb(await self._call(self._stub.QueryInstances, request))

    async def raise_event(self, instance_id: str, name: str, data: str | None) -> None:
        if not name:
            raise ValueError("event name must be a non-empty string")
        request = pb.RaiseEventRequest(instanceId=instance_id, name=name, input=convert.payload_to_pb(data))
        await self._call(self._stub.RaiseEvent, request, instance_id=instance_id)

    async def terminate(self, instance_id: str, output: str | None, recursive: bool) -> None:
        request = pb.TerminateRequest(
            instanceId=instance_id, output=convert.payload_to_pb(output), recursive=recursive
        )
        await self._call(self._stub.TerminateInstance, request, instance_id=instance_id)

    async def suspend(self, instance_id: str, reason: str | None) -> None:
        request = pb.SuspendRequest(instanceId=instance_id, reason=convert.payload_to_pb(reason))
        await self._call(self._stub.SuspendInstance, request, instance_id=instance_id)

    async def resume(self, instance_id: str, reason: str | None) -> None:
        request = pb.ResumeRequest(instanceId=instance_id, reason=convert.payload_to_pb(reason))
        await self._call(self._stub.ResumeInstance, request, instance_id=instance_id)

    async def purge(self, instance_id: str, recursive: bool) -> int:
        request = pb.PurgeInstancesRequest(instanceId=instance_id, recursive=recursive, isOrchestration=True)
        response = await self._call(self._stub.PurgeInstances, request, instance_id=instance_id)
        return int(response.deletedInstanceCount)

    async def purge_matching(self, filter: PurgeInstancesFilter) -> int:
        """Every matching instance: a scheduler may purge in rounds (``isComplete`` false), so ask
        again until it says it is done or a round removes nothing."""
        request = pb.PurgeInstancesRequest(purgeInstanceFilter=convert.purge_filter_to_pb(filter))
        purged = 0
        while True:
            response = await self._call(self._stub.PurgeInstances, request)
            purged += int(response.deletedInstanceCount)
            unfinished = response.HasField("isComplete") and not response.isComplete.value
            if not unfinished or response.deletedInstanceCount == 0:
                return purged

    async def get_history(self, instance_id: str) -> list[h.HistoryEvent]:
        """The instance's history; events duratask's model has no counterpart for (entity
        operations, generic events) are left out.

        While this backend holds a work item of the instance, its history is the one the item came
        with (nothing else changes a leased instance's history): no call is needed.
        """
        held = self._held_histories.get(instance_id)
        if held is not None:
            return convert.history_from_pb(held[1])  # checked when leased: all supported
        return _supported_events(await self._history_messages(instance_id))

    # --- worker side: orchestrations ------------------------------------------------------------

    def _open_work_stream(self) -> Any:
        return self._stub.GetWorkItems(self._work_request, metadata=self._metadata)

    async def lease_orchestrations(self, limit: int) -> list[OrchestrationWorkItem]:
        self._stream.start()
        items = []
        for message in self._stream.take("orchestration", limit):
            leased = await self._orchestration_item(message)
            if leased is not None:
                item, past = leased
                self._leased.add(("orchestration", item.token, item.instance_id, -1))
                self._held_histories[item.instance_id] = (item.token, past)
                items.append(item)
        return items

    async def _orchestration_item(self, message: Any) -> tuple[OrchestrationWorkItem, Sequence[Any]] | None:
        """Our work item (its ``history`` left for ``get_history``) and the protocol events of that
        history, fetched if the scheduler left them out. A work item duratask cannot run fails its
        instance; one whose history cannot be fetched goes back."""
        request = message.orchestratorRequest
        try:
            past = request.pastEvents
            if request.requiresHistoryStreaming:
                past = await self._history_messages(request.instanceId, for_work_item=True)
            return convert.orchestration_work_item_from_pb(message, past, with_history=False), past
        except convert.UnsupportedMessageError as exc:
            log.error("failing orchestration %r: %s", request.instanceId, exc)
            await self._complete_orchestration(_placeholder(message), _unsupported(exc))
        except Exception as exc:  # noqa: BLE001 - whatever it was, the item goes back
            log.warning(
                "handing back orchestration %r: fetching its history failed: %s", request.instanceId, exc
            )
            await self._abandon_message(message)
        return None

    async def complete_orchestrations(
        self, done: list[tuple[OrchestrationWorkItem, OrchestrationResult]], *, lease_activities: int = 0
    ) -> list[bool]:
        # ``lease_activities``: the scheduler streams work as it comes; nothing to lease ahead.
        return list(await asyncio.gather(*(self._complete_orchestration(i, r) for i, r in done)))

    async def _complete_orchestration(self, item: OrchestrationWorkItem, result: OrchestrationResult) -> bool:
        self._release(item)
        rpc = self._stub.CompleteOrchestratorTask
        refusal = await self._settle(rpc, convert.orchestration_result_to_pb(item, result), item.instance_id)
        if refusal is not None and refusal.code() in _RESULT_REFUSED:
            failed = OrchestrationResult(
                actions=[
                    h.CompleteOrchestration(id=-1, status=Status.FAILED, failure=_refused_result(refusal))
                ]
            )
            refusal = await self._settle(
                rpc, convert.orchestration_result_to_pb(item, failed), item.instance_id
            )
        return refusal is None

    async def abandon_orchestration(self, item: OrchestrationWorkItem) -> None:
        self._release(item)
        await self._abandon(
            self._stub.AbandonTaskOrchestratorWorkItem, pb.AbandonOrchestrationTaskRequest, item.token
        )

    def _release(self, item: OrchestrationWorkItem) -> None:
        self._leased.discard(("orchestration", item.token, item.instance_id, -1))
        held = self._held_histories.get(item.instance_id)
        if held is not None and held[0] == item.token:
            del self._held_histories[item.instance_id]

    # --- worker side: activities ----------------------------------------------------------------

    async def lease_activities(self, limit: int) -> list[ActivityWorkItem]:
        self._stream.start()
        items = [convert.activity_work_item_from_pb(m) for m in self._stream.take("activity", limit)]
        self._leased.update(("activity", i.token, i.instance_id, i.task_id) for i in items)
        return items

    async def complete_activities(
        self, done: list[tuple[ActivityWorkItem, h.TaskCompleted | h.TaskFailed]], *, lease_orchestrations: int = 0
    ) -> list[bool]:
        return list(await asyncio.gather(*(self._complete_activity(i, e) for i, e in done)))

    async def release_prefetched(self) -> None:
        """Nothing is leased ahead over gRPC (``complete_*`` ignore ``lease_*``)."""

    async def _complete_activity(
        self, item: ActivityWorkItem, outcome: h.TaskCompleted | h.TaskFailed
    ) -> bool:
        self._leased.discard(("activity", item.token, item.instance_id, item.task_id))
        rpc = self._stub.CompleteActivityTask
        refusal = await self._settle(rpc, convert.activity_outcome_to_pb(item, outcome), item.instance_id)
        if refusal is not None and refusal.code() in _RESULT_REFUSED:
            failed = h.TaskFailed(
                timestamp=outcome.timestamp, task_scheduled_id=item.task_id, failure=_refused_result(refusal)
            )
            refusal = await self._settle(rpc, convert.activity_outcome_to_pb(item, failed), item.instance_id)
        return refusal is None

    async def abandon_activity(self, item: ActivityWorkItem) -> None:
        self._leased.discard(("activity", item.token, item.instance_id, item.task_id))
        await self._abandon(self._stub.AbandonTaskActivityWorkItem, pb.AbandonActivityTaskRequest, item.token)

    async def wait_for_work(self, kind: WorkKind, timeout: float) -> None:
        self._stream.start()
        await self._stream.wait(kind, timeout)

    # --- settling work items --------------------------------------------------------------------

    async def _settle(self, rpc: Any, message: Any, instance_id: str) -> grpc.aio.AioRpcError | None:
        """Send a completion: ``None`` when the scheduler took it, else the error it answered."""
        try:
            await rpc(message, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            level = logging.INFO if exc.code() in _REFUSED else logging.WARNING
            log.log(
                level, "completion for %r not applied: %s: %s", instance_id, exc.code().name, exc.details()
            )
            return exc
        except grpc.aio.UsageError as exc:
            raise self._closed_error() from exc
        return None

    async def _abandon(self, rpc: Any, request_type: Callable[..., Any], token: str) -> None:
        """Hand a work item back. Best effort: the scheduler's lease expires anyway."""
        try:
            await rpc(request_type(completionToken=token), metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            log.debug("handing back work item %r failed: %s: %s", token, exc.code().name, exc.details())
        except grpc.aio.UsageError:
            log.debug("handing back work item %r: the channel is closed", token)

    def _abandon_leased(self, leased: _Leased) -> Awaitable[None]:
        kind, token = leased[0], leased[1]
        if kind == "orchestration":
            return self._abandon(
                self._stub.AbandonTaskOrchestratorWorkItem, pb.AbandonOrchestrationTaskRequest, token
            )
        return self._abandon(self._stub.AbandonTaskActivityWorkItem, pb.AbandonActivityTaskRequest, token)

    def _abandon_message(self, message: Any) -> Awaitable[None]:
        kind = message.WhichOneof("request")
        token = message.completionToken
        if kind == "orchestratorRequest":
            return self._abandon(
                self._stub.AbandonTaskOrchestratorWorkItem, pb.AbandonOrchestrationTaskRequest, token
            )
        if kind == "activityRequest":
            return self._abandon(self._stub.AbandonTaskActivityWorkItem, pb.AbandonActivityTaskRequest, token)
        return self._abandon(self._stub.AbandonTaskEntityWorkItem, pb.AbandonEntityTaskRequest, token)

    def _hand_back_entity_item(self, message: Any) -> None:
        if not self._warned_entities:
            log.warning(
                "duratask does not run durable entities: handing entity work items back to the scheduler"
            )
            self._warned_entities = True

        async def later() -> None:
            await asyncio.sleep(ENTITY_HANDBACK_DELAY_SECONDS)
            await self._abandon_message(message)

        task = asyncio.get_running_loop().create_task(later())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _reached(status: Status, until: WaitUntil) -> bool:
    return status.is_terminal if until == "completion" else status is not Status.PENDING


def _supported_events(messages: Sequence[Any]) -> list[h.HistoryEvent]:
    events = []
    for message in messages:
        with contextlib.suppress(convert.UnsupportedMessageError):
            events.append(convert.event_from_pb(message))
    return events


def _refused_result(refusal: grpc.aio.AioRpcError) -> TaskFailureDetails:
    return TaskFailureDetails(
        error_type=_RESULT_REFUSED[refusal.code()],
        error_message=f"the scheduler refused the result: {refusal.details()}",
    )


def _unsupported(exc: Exception) -> OrchestrationResult:
    failure = TaskFailureDetails(
        error_type="duratask.UnsupportedMessageError",
        error_message=f"duratask cannot run this orchestration: {exc}",
        is_non_retriable=True,
    )
    return OrchestrationResult(
        actions=[h.CompleteOrchestration(id=-1, status=Status.FAILED, failure=failure)]
    )


def _placeholder(message: Any) -> OrchestrationWorkItem:
    """Just enough of a work item to complete it: which instance, which token."""
    return OrchestrationWorkItem(
        instance_id=message.orchestratorRequest.instanceId,
        execution_id="",
        name="",
        token=message.completionToken,
        new_events=[],
        history_length=0,
    )
