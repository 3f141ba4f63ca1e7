"""Our generated protocol against the official Python SDK's: same descriptors, same bytes, same paths.

The official module (durabletask 1.12) is used here as the reference only; the two are imported in
one process, which is itself part of what is tested (our stubs live in a private descriptor pool).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, wrappers_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from duratask.protocol import StringValue, Timestamp, pb, pb_grpc

official = pytest.importorskip("durabletask.internal.orchestrator_service_pb2")
official_grpc = pytest.importorskip("durabletask.internal.orchestrator_service_pb2_grpc")


def _field_facts(field: FieldDescriptor) -> tuple[Any, ...]:
    def type_name(descriptor: Descriptor | EnumDescriptor | None) -> str | None:
        return None if descriptor is None else descriptor.full_name

    return (
        field.number,
        field.type,
        field.is_repeated,
        type_name(field.message_type),
        type_name(field.enum_type),
        field.containing_oneof.name if field.containing_oneof else None,
        field.GetOptions().deprecated,
    )


def _message_facts(message: Descriptor) -> dict[str, Any]:
    return {
        "fields": {field.name: _field_facts(field) for field in message.fields},
        "oneofs": sorted(oneof.name for oneof in message.oneofs),
        "nested": {nested.name: _message_facts(nested) for nested in message.nested_types},
        "enums": sorted(enum.name for enum in message.enum_types),
        "is_map_entry": message.GetOptions().map_entry,
    }


def test_package_is_the_official_one_which_is_none() -> None:
    assert pb.DESCRIPTOR.package == official.DESCRIPTOR.package == ""


def test_same_messages_with_same_fields_numbers_and_types() -> None:
    ours = pb.DESCRIPTOR.message_types_by_name
    theirs = official.DESCRIPTOR.message_types_by_name
    assert sorted(ours) == sorted(theirs)
    for name, descriptor in theirs.items():
        assert _message_facts(ours[name]) == _message_facts(descriptor), name


def test_same_enums_with_same_values() -> None:
    ours = pb.DESCRIPTOR.enum_types_by_name
    theirs = official.DESCRIPTOR.enum_types_by_name
    assert sorted(ours) == sorted(theirs)
    for name, enum in theirs.items():
        assert [(v.name, v.number) for v in ours[name].values] == [(v.name, v.number) for v in enum.values]


def test_same_service_methods_with_same_types_and_streaming() -> None:
    def methods(file: Any) -> dict[str, tuple[Any, ...]]:
        service = file.services_by_name["TaskHubSidecarService"]
        assert service.full_name == "TaskHubSidecarService"
        return {
            m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
            for m in service.methods
        }

    assert methods(pb.DESCRIPTOR) == methods(official.DESCRIPTOR)


# --- bytes ------------------------------------------------------------------------------------

_SAMPLE_SCALARS = {
    FieldDescriptor.TYPE_STRING: "text",
    FieldDescriptor.TYPE_BYTES: b"\x01",
    FieldDescriptor.TYPE_BOOL: True,
    FieldDescriptor.TYPE_DOUBLE: 1.5,
    FieldDescriptor.TYPE_FLOAT: 2.5,
}


def _sample_scalar(field: FieldDescriptor) -> Any:
    if field.enum_type is not None:
        return field.enum_type.values[-1].number
    return _SAMPLE_SCALARS.get(field.type, 7)  # every integer type


def _populate(message: Any, depth: int, oneof_choice: dict[str, str]) -> None:
    """Set every field (one member per oneof), recursing ``depth`` levels into sub-messages."""
    descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof_choice.get(oneof.name, oneof.fields[0].name) != field.name:
            continue
        target = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is None:
                target["key"] = _sample_scalar(value_field)
            elif depth > 0:
                _populate(target["key"], depth - 1, {})
        elif field.message_type is not None:
            if depth == 0:
                continue
            if field.is_repeated:
                for _ in range(2):
                    _populate(target.add(), depth - 1, {})
            else:
                target.SetInParent()
                _populate(target, depth - 1, {})
        elif field.is_repeated:
            target.extend([_sample_scalar(field)] * 2)
        else:
            setattr(message, field.name, _sample_scalar(field))


def _official_samples() -> Iterator[tuple[str, Any]]:
    """Populated official messages: one per message type, plus one per member of each oneof."""
    for name, cls in sorted(official.DESCRIPTOR.message_types_by_name.items()):
        message_class = getattr(official, name)
        choices: list[dict[str, str]] = [{}]
        for oneof in cls.oneofs:
            choices += [{oneof.name: member.name} for member in oneof.fields]
        for choice in choices:
            message = message_class()
            _populate(message, depth=3, oneof_choice=choice)
            yield f"{name}{choice or ''}", message


@pytest.mark.parametrize(
    "theirs", [pytest.param(message, id=label) for label, message in _official_samples()]
)
def test_bytes_round_trip_between_official_and_ours(theirs: Any) -> None:
    ours_class = getattr(pb, theirs.DESCRIPTOR.name)
    ours = ours_class.FromString(theirs.SerializeToString())
    # MessageToDict ignores unknown fields: equal dicts mean our side understood every field.
    as_dict = json_format.MessageToDict(theirs, preserving_proto_field_name=True)
    assert json_format.MessageToDict(ours, preserving_proto_field_name=True) == as_dict
    back = type(theirs).FromString(ours.SerializeToString())
    assert back == theirs
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)


def test_samples_cover_every_history_event_and_action_kind() -> None:
    labels = {label for label, _ in _official_samples()}
    for oneof_owner, oneof in (
        ("HistoryEvent", "eventType"),
        ("OrchestratorAction", "orchestratorActionType"),
    ):
        members = official.DESCRIPTOR.message_types_by_name[oneof_owner].oneofs_by_name[oneof].fields
        for member in members:
            assert f"{oneof_owner}{ {oneof: member.name} }" in labels


# --- private pool -----------------------------------------------------------------------------


def test_our_stubs_live_beside_the_official_ones_in_a_private_pool() -> None:
    assert pb.HistoryEvent is not official.HistoryEvent
    assert pb.DESCRIPTOR.pool is not descriptor_pool.Default()
    assert official.DESCRIPTOR.pool is descriptor_pool.Default()


def test_well_known_types_must_be_the_private_pools_classes() -> None:
    # The documented price of the private pool: google's own wrapper classes are refused...
    with pytest.raises(TypeError):
        pb.RaiseEventRequest(input=wrappers_pb2.StringValue(value="1"))
    # ...while ours, plain dicts and in-place assignment work.
    by_class = pb.RaiseEventRequest(input=StringValue(value="1"))
    by_dict = pb.RaiseEventRequest(input={"value": "1"})
    in_place = pb.RaiseEventRequest()
    in_place.input.value = "1"
    assert by_class == by_dict == in_place
    stamp = Timestamp(seconds=5)
    assert pb.TimerFiredEvent(fireAt=stamp).fireAt.seconds == 5


# --- gRPC method paths over a real loopback server --------------------------------------------


class _EchoingServicer(pb_grpc.TaskHubSidecarServiceServicer):  # type: ignore[misc]
    """Implements two calls; every other method keeps the generated 'not implemented' body."""

    def StartInstance(self, request: Any, context: Any) -> Any:
        return pb.CreateInstanceResponse(instanceId=f"{request.name}:{request.input.value}")

    def GetWorkItems(self, request: Any, context: Any) -> Iterator[Any]:
        for task_id in range(request.maxConcurrentActivityWorkItems):
            yield pb.WorkItem(
                activityRequest=pb.ActivityRequest(name="act", taskId=task_id), completionToken="t"
            )


@pytest.fixture
def official_stub() -> Iterator[Any]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_TaskHubSidecarServiceServicer_to_server(_EchoingServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield official_grpc.TaskHubSidecarServiceStub(channel)
    finally:
        channel.close()
        server.stop(grace=None)


def test_official_stub_reaches_our_servicer_for_unary_and_streaming_calls(official_stub: Any) -> None:
    response = official_stub.StartInstance(
        official.CreateInstanceRequest(name="orch", input=wrappers_pb2.StringValue(value="42")), timeout=5
    )
    assert response.instanceId == "orch:42"
    items = list(
        official_stub.GetWorkItems(official.GetWorkItemsRequest(maxConcurrentActivityWorkItems=3), timeout=5)
    )
    assert [(item.activityRequest.name, item.activityRequest.taskId) for item in items] == [
        ("act", 0),
        ("act", 1),
        ("act", 2),
    ]


def test_every_official_method_path_is_routed_to_our_servicer(official_stub: Any) -> None:
    service = official.DESCRIPTOR.services_by_name["TaskHubSidecarService"]
    unimplemented = [m for m in service.methods if m.name not in {"StartInstance", "GetWorkItems"}]
    assert len(unimplemented) == len(service.methods) - 2
    for method in unimplemented:
        request = getattr(official, method.input_type.name, None) or _google_empty()
        with pytest.raises(grpc.RpcError) as raised:
            call = getattr(official_stub, method.name)(request(), timeout=5)
            if method.server_streaming:
                list(call)
        # gRPC itself answers an unknown path with "Method not found!"; this text comes from the
        # generated servicer base, so the path reached our service.
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED, method.name
        assert raised.value.details() == "Method not implemented!", method.name


def _google_empty() -> Any:
    from google.protobuf import empty_pb2

    return empty_pb2.Empty
