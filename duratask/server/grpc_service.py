"""``TaskHubSidecarService``: the official Durable Task gRPC service over duratask's LocalBackend.

A thin adapter: each RPC translates its request (``duratask.protocol.convert``), calls the task
hub's backend, and translates the answer back. Errors become statuses through one table
(``server.errors``). Work items go through the hub's ``Dispatcher`` (``server.work_items``).

Every method is registered through ``handlers()``, which wraps it with what all RPCs share:
the bearer-token check (``UNAUTHENTICATED``), the task hub named by the ``taskhub`` metadata
(``NOT_FOUND`` for a hub this server does not serve), a request that does not parse
(``INVALID_ARGUMENT``, where gRPC alone would answer an opaque ``INTERNAL``), and the error table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import msgspec
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from .. import history as h
from ..backend.local import LocalBackend
from ..errors import OrchestrationNotFoundError
from ..models import TERMINAL_STATUSES, OrchestrationQuery
from ..protocol import convert, pb
from .errors import RpcError, invalid, not_found, status_of
from .settings import DEFAULT_TASKHUB, ServerSettings
from .work_items import ACTIVITY, ENTITY, ORCHESTRATION, Dispatcher

log = logging.getLogger("duratask.server")

SERVICE_NAME = "TaskHubSidecarService"

# A scheduled start at (or near) the epoch is "now": the JavaScript SDK always sends the field,
# zero when the caller gave no start time.
_EPOCH_GRACE = datetime(1970, 1, 2, tzinfo=UTC)
# How long StartInstance waits for a RUNNING instance its reuse policy replaces to end.
_REPLACE_WAIT_SECONDS = 30.0


@dataclass
class Hub:
    """One served task hub: its backend and its work-item dispatcher."""

    name: str
    backend: LocalBackend
    dispatcher: Dispatcher


class TaskHubService:
    """The RPCs, each ``async (request, context, hub) -> response`` (or an async iterator)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings

    # --- connection ---------------------------------------------------------------------------

    async def Hello(self, request: Any, context: Any, hub: Hub) -> Any:
        return _Empty()

    # --- client: instances --------------------------------------------------------------------

    async def StartInstance(self, request: Any, context: Any, hub: Hub) -> Any:
        start = convert.start_request_from_pb(request)
        instance_id = start.instance_id or uuid.uuid4().hex
        start_at = start.start_at if start.start_at is not None and start.start_at > _EPOCH_GRACE else None
        if request.HasField("orchestrationIdReusePolicy"):
            replaceable = {
                convert.status_from_pb(s) for s in request.orchestrationIdReusePolicy.replaceableStatus
            }
            await self._make_room(hub, instance_id, replaceable, context)
        await hub.backend.start_orchestration(
            start.name, instance_id, start.input, start_at=start_at, version=start.version, tags=start.tags
        )
        return pb.CreateInstanceResponse(instanceId=instance_id)

    async def _make_room(self, hub: Hub, instance_id: str, replaceable: set[Any], context: Any) -> None:
        """The id reuse policy: an existing instance whose status is listed is replaced (a running
        one terminated first); any other existing instance keeps the id (``ALREADY_EXISTS``)."""
        existing = await hub.backend.get_instance(instance_id, with_payloads=False)
        if existing is None:
            return
        status = existing.runtime_status
        if status not in replaceable:
            raise RpcError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"orchestration instance {instance_id!r} exists with status {status.name}, "
                "which the request's id reuse policy does not replace",
            )
        if status in TERMINAL_STATUSES:
            return
        await hub.backend.terminate(instance_id, None, recursive=True)
        remaining = context.time_remaining()
        wait = _REPLACE_WAIT_SECONDS if remaining is None else min(remaining, _REPLACE_WAIT_SECONDS)
        await hub.backend.wait_for_instance(instance_id, "completion", False, wait)

    async def GetInstance(self, request: Any, context: Any, hub: Hub) -> Any:
        # A missing instance is exists=false, not NOT_FOUND: the official clients read it that way.
        metadata = await hub.backend.get_instance(request.instanceId, request.getInputsAndOutputs)
        return convert.instance_response_to_pb(metadata)

    async def WaitForInstanceStart(self, request: Any, context: Any, hub: Hub) -> Any:
        return await self._wait(request, context, hub, "start")

    async def WaitForInstanceCompletion(self, request: Any, context: Any, hub: Hub) -> Any:
        return await self._wait(request, context, hub, "completion")

    async def _wait(self, request: Any, context: Any, hub: Hub, until: Any) -> Any:
        """Long poll until the caller's deadline (none: as long as the caller stays)."""
        metadata = await hub.backend.wait_for_instance(
            request.instanceId, until, request.getInputsAndOutputs, context.time_remaining()
        )
        return convert.instance_response_to_pb(metadata)

    async def RaiseEvent(self, request: Any, context: Any, hub: Hub) -> Any:
        data = convert.payload_from_pb(request, "input")
        await hub.backend.raise_event(request.instanceId, request.name, data)
        return pb.RaiseEventResponse()

    async def TerminateInstance(self, request: Any, context: Any, hub: Hub) -> Any:
        output = convert.payload_from_pb(request, "output")
        await hub.backend.terminate(request.instanceId, output, request.recursive)
        return pb.TerminateResponse()

    async def SuspendInstance(self, request: Any, context: Any, hub: Hub) -> Any:
        await hub.backend.suspend(request.instanceId, convert.payload_from_pb(request, "reason"))
        return pb.SuspendResponse()

    async def ResumeInstance(self, request: Any, context: Any, hub: Hub) -> Any:
        await hub.backend.resume(request.instanceId, convert.payload_from_pb(request, "reason"))
        return pb.ResumeResponse()

    async def RestartInstance(self, request: Any, context: Any, hub: Hub) -> Any:
        instance_id = await hub.backend.restart(request.instanceId, request.restartWithNewInstanceId)
        return pb.RestartInstanceResponse(instanceId=instance_id)

    async def RewindInstance(self, request: Any, context: Any, hub: Hub) -> Any:
        await hub.backend.rewind(request.instanceId, convert.payload_from_pb(request, "reason"))
        return pb.RewindInstanceResponse()

    async def QueryInstances(self, request: Any, context: Any, hub: Hub) -> Any:
        query = convert.query_from_pb(request.query)
        query = dataclasses.replace(query, page_size=min(query.page_size, self.settings.max_page_size))
        result = await hub.backend.query_instances(query)
        if not request.query.fetchInputsAndOutputs:
            result = dataclasses.replace(result, instances=[_without_payloads(m) for m in result.instances])
        return convert.query_result_to_pb(result)

    async def ListInstanceIds(self, request: Any, context: Any, hub: Hub) -> Any:
        """Terminal instances, optionally by status and completion time, in pages. The completion
        time of a terminal instance is its last update (nothing changes it afterwards)."""
        statuses = [convert.status_from_pb(s) for s in request.runtimeStatus] or None
        terminal = [s for s in (statuses or TERMINAL_STATUSES) if s in TERMINAL_STATUSES]
        page_size = min(request.pageSize or 100, self.settings.max_page_size)
        token = convert.payload_from_pb(request, "lastInstanceKey") or None
        low = _optional_time(request, "completedTimeFrom")
        high = _optional_time(request, "completedTimeTo")
        if not terminal:
            return pb.ListInstanceIdsResponse()
        query = OrchestrationQuery(runtime_status=terminal, page_size=page_size, continuation_token=token)
        result = await hub.backend.query_instances(query)
        ids = [
            m.instance_id
            for m in result.instances
            if (low is None or m.last_updated_at >= low) and (high is None or m.last_updated_at <= high)
        ]
        response = pb.ListInstanceIdsResponse(instanceIds=ids)
        if result.continuation_token:
            response.lastInstanceKey.value = result.continuation_token
        return response

    async def PurgeInstances(self, request: Any, context: Any, hub: Hub) -> Any:
        which = request.WhichOneof("request")
        if which == "instanceId":
            count = await hub.backend.purge(request.instanceId, request.recursive)
        elif which == "instanceBatch":
            count = 0
            for instance_id in request.instanceBatch.instanceIds:
                try:
                    count += await hub.backend.purge(instance_id, request.recursive)
                except OrchestrationNotFoundError:
                    continue
        elif which == "purgeInstanceFilter":
            count = await hub.backend.purge_matching(
                convert.purge_filter_from_pb(request.purgeInstanceFilter)
            )
        else:
            raise invalid("PurgeInstancesRequest names no instance id, batch or filter")
        response = pb.PurgeInstancesResponse(deletedInstanceCount=count)
        response.isComplete.value = True
        return response

    async def StreamInstanceHistory(self, request: Any, context: Any, hub: Hub) -> AsyncIterator[Any]:
        instance_id, wanted = request.instanceId, request.executionId.value
        history = await hub.backend.get_history(instance_id)  # NOT_FOUND for an unknown instance
        if wanted:
            # Only the current execution's history is kept. Its ExecutionStarted, read with the events,
            # names that execution (no ContinueAsNew can slip between the two); before its first
            # episode the history is empty and the instance row names it.
            started = next((e for e in history if isinstance(e, h.ExecutionStarted)), None)
            if started is not None:
                current = started.execution_id
            else:
                record = await hub.backend.storage.get_instance(instance_id)
                if record is None:  # purged since its history was read
                    raise OrchestrationNotFoundError(instance_id)
                current = record.execution_id
            if wanted != current:
                raise not_found(
                    f"orchestration instance {instance_id!r} has no execution {wanted!r} "
                    f"(its current execution is {current!r}; only the current one's history is kept)"
                )
        size = self.settings.history_chunk_events
        for start in range(0, max(len(history), 1), size):
            chunk = history[start : start + size]
            yield pb.HistoryChunk(events=[convert.event_to_pb(e) for e in chunk])

    # --- workers ------------------------------------------------------------------------------

    async def GetWorkItems(self, request: Any, context: Any, hub: Hub) -> AsyncIterator[Any]:
        stream = hub.dispatcher.connect(request)
        ping = self.settings.health_ping_seconds
        try:
            while True:
                item = await stream.next_message(ping)
                if item is None:  # the server is stopping: end the stream, the worker reconnects
                    return
                yield item
        finally:
            # Shielded: a cancelled stream (the worker went away) still hands its items back.
            await asyncio.shield(hub.dispatcher.disconnect(stream))

    async def CompleteOrchestratorTask(self, request: Any, context: Any, hub: Hub) -> Any:
        if not await hub.dispatcher.complete_orchestration(request):
            raise _lease_lost(request.completionToken)
        return pb.CompleteTaskResponse()

    async def CompleteActivityTask(self, request: Any, context: Any, hub: Hub) -> Any:
        if not await hub.dispatcher.complete_activity(request):
            raise _lease_lost(request.completionToken)
        return pb.CompleteTaskResponse()

    async def AbandonTaskOrchestratorWorkItem(self, request: Any, context: Any, hub: Hub) -> Any:
        await hub.dispatcher.abandon(request.completionToken, ORCHESTRATION)
        return pb.AbandonOrchestrationTaskResponse()

    async def AbandonTaskActivityWorkItem(self, request: Any, context: Any, hub: Hub) -> Any:
        await hub.dispatcher.abandon(request.completionToken, ACTIVITY)
        return pb.AbandonActivityTaskResponse()

    # --- durable entities ---------------------------------------------------------------------
    # Entities live in the hub's storage as instances "@name@key" (``backend.entities``); their
    # batches reach workers through the dispatcher, like orchestrations.

    async def SignalEntity(self, request: Any, context: Any, hub: Hub) -> Any:
        signal = convert.signal_request_from_pb(request)
        await hub.backend.signal_entity(
            signal.instance_id,
            signal.operation,
            signal.input,
            request_id=signal.request_id or None,
            scheduled_time=signal.scheduled_time,
        )
        return pb.SignalEntityResponse()

    async def GetEntity(self, request: Any, context: Any, hub: Hub) -> Any:
        # A missing entity is exists=false, as for instances: the official clients read it that way.
        metadata = await hub.backend.get_entity(request.instanceId, request.includeState)
        return convert.entity_response_to_pb(metadata)

    async def QueryEntities(self, request: Any, context: Any, hub: Hub) -> Any:
        query = convert.entity_query_from_pb(request.query)
        query = msgspec.structs.replace(query, page_size=min(query.page_size, self.settings.max_page_size))
        return convert.entity_query_result_to_pb(await hub.backend.query_entities(query))

    async def CleanEntityStorage(self, request: Any, context: Any, hub: Hub) -> Any:
        result = await hub.backend.clean_entity_storage(
            request.removeEmptyEntities,
            request.releaseOrphanedLocks,
            convert.payload_from_pb(request, "continuationToken") or None,
        )
        return convert.clean_entity_storage_result_to_pb(result)

    async def CompleteEntityTask(self, request: Any, context: Any, hub: Hub) -> Any:
        if not await hub.dispatcher.complete_entity(request):
            raise _lease_lost(request.completionToken)
        return pb.CompleteTaskResponse()

    async def AbandonTaskEntityWorkItem(self, request: Any, context: Any, hub: Hub) -> Any:
        await hub.dispatcher.abandon(request.completionToken, ENTITY)
        return pb.AbandonEntityTaskResponse()

    # --- not served ----------------------------------------------------------------------------
    # Task hub management and SkipGracefulOrchestrationTerminations: hubs are chosen with
    # `serve --taskhub`.

    async def CreateTaskHub(self, request: Any, context: Any, hub: Hub) -> Any:
        raise _unimplemented("task hub management (hubs are chosen with `duratask serve --taskhub`)")

    async def DeleteTaskHub(self, request: Any, context: Any, hub: Hub) -> Any:
        raise _unimplemented("task hub management (hubs are chosen with `duratask serve --taskhub`)")

    async def SkipGracefulOrchestrationTerminations(self, request: Any, context: Any, hub: Hub) -> Any:
        raise _unimplemented("SkipGracefulOrchestrationTerminations (use TerminateInstance)")


def _unimplemented(what: str) -> RpcError:
    return RpcError(grpc.StatusCode.UNIMPLEMENTED, f"duratask serve does not support {what} yet")


def _lease_lost(token: str) -> RpcError:
    return RpcError(
        grpc.StatusCode.ABORTED,
        f"the lease of work item {token!r} expired or passed to another worker; nothing was stored",
    )


def _without_payloads(metadata: Any) -> Any:
    return dataclasses.replace(
        metadata, serialized_input=None, serialized_output=None, serialized_custom_status=None
    )


def _optional_time(message: Any, field: str) -> datetime | None:
    return convert.timestamp_from_pb(getattr(message, field)) if message.HasField(field) else None


_Empty: Any = message_factory.GetMessageClass(
    pb.DESCRIPTOR.pool.FindMessageTypeByName("google.protobuf.Empty")
)


# --- the handler table --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Malformed:
    """Stands for a request whose bytes did not parse; the handler refuses it."""

    message_type: str
    error: str


def _parser(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return _Malformed(message_class.DESCRIPTOR.name, str(exc) or type(exc).__name__)

    return parse


class _Gate:
    """What every RPC checks before it runs: credentials, request bytes, task hub."""

    def __init__(self, hubs: dict[str, Hub], auth_token: str | None) -> None:
        self.hubs = hubs
        self.expected_authorization = f"Bearer {auth_token}".encode() if auth_token else None

    def admit(self, request: Any, context: Any) -> Hub:
        metadata = {key.lower(): value for key, value in (context.invocation_metadata() or ())}
        if self.expected_authorization is not None:
            given = metadata.get("authorization", "")
            given_bytes = given.encode() if isinstance(given, str) else bytes(given)
            if not hmac.compare_digest(given_bytes, self.expected_authorization):
                raise RpcError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this server needs the metadata 'authorization: Bearer <token>' with its --auth-token",
                )
        if isinstance(request, _Malformed):
            raise invalid(
                f"malformed request: the bytes are not a valid {request.message_type} ({request.error})"
            )
        name = metadata.get("taskhub") or DEFAULT_TASKHUB
        hub = self.hubs.get(name)
        if hub is None:
            served = ", ".join(sorted(self.hubs))
            raise not_found(f"task hub {name!r} is not served here (served: {served})")
        return hub


async def _answer(context: Any, exc: BaseException) -> None:
    status = status_of(exc)
    if status is None:
        log.exception("unexpected error in an RPC", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
    else:
        await context.abort(status.code, status.message)


def _unary(gate: _Gate, method: Callable[[Any, Any, Hub], Awaitable[Any]]) -> Callable[..., Any]:
    async def handle(request: Any, context: Any) -> Any:
        try:
            return await method(request, context, gate.admit(request, context))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (_answer)
            failure = exc
        await _answer(context, failure)

    return handle


def _streaming(gate: _Gate, method: Callable[[Any, Any, Hub], AsyncIterator[Any]]) -> Callable[..., Any]:
    async def handle(request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for message in method(request, context, gate.admit(request, context)):
                yield message
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (_answer)
            failure = exc
        await _answer(context, failure)

    return handle


def handlers(service: TaskHubService, hubs: dict[str, Hub], auth_token: str | None) -> grpc.GenericRpcHandler:
    """Every method of the service, as the protocol's descriptor lists them, through the gate."""
    gate = _Gate(hubs, auth_token)
    descriptor = pb.DESCRIPTOR.services_by_name[SERVICE_NAME]
    table: dict[str, grpc.RpcMethodHandler] = {}
    for method in descriptor.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        implementation = getattr(service, method.name)
        if method.server_streaming:
            table[method.name] = grpc.unary_stream_rpc_method_handler(
                _streaming(gate, implementation),
                request_deserializer=_parser(request_class),
                response_serializer=response_class.SerializeToString,
            )
        else:
            table[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(gate, implementation),
                request_deserializer=_parser(request_class),
                response_serializer=response_class.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, table)


__all__ = ["SERVICE_NAME", "Hub", "TaskHubService", "handlers"]
