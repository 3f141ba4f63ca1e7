"""The Durable Task wire protocol: duratask's own ``orchestrator_service.proto`` and its stubs.

``pb`` is the generated message module, ``pb_grpc`` the generated service module (stub,
servicer base, ``add_TaskHubSidecarServiceServicer_to_server``). Both are generated at build
time by ``hatch_build.py``; ``duratask.protocol.convert`` maps them to duratask's event model.

The stubs live in a private descriptor pool so that they coexist with the official SDK's in one
process (``_private_pool`` says why). Consequently, the well-known types nested in our messages
must be built with the classes below, not with ``google.protobuf.wrappers_pb2`` and friends:
``pb.RaiseEventRequest(input=StringValue(value="1"))``. Plain dicts work too.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

if (
    find_spec(f"{__name__}.orchestrator_service_pb2") is None
    or find_spec(f"{__name__}.orchestrator_service_pb2_grpc") is None
):
    raise ImportError(
        "duratask's gRPC stubs (duratask/protocol/orchestrator_service_pb2*.py) are generated at "
        "build time and are missing from this source tree: run `pip install -e .` in the "
        "repository (or `python hatch_build.py` after editing the .proto)."
    )

from google.protobuf import message_factory

from . import orchestrator_service_pb2 as pb
from . import orchestrator_service_pb2_grpc as pb_grpc


def _well_known_type(full_name: str) -> Any:
    return message_factory.GetMessageClass(pb.DESCRIPTOR.pool.FindMessageTypeByName(full_name))


# The private pool's classes for the well-known types that our messages contain.
StringValue: Any = _well_known_type("google.protobuf.StringValue")
Int32Value: Any = _well_known_type("google.protobuf.Int32Value")
BoolValue: Any = _well_known_type("google.protobuf.BoolValue")
Timestamp: Any = _well_known_type("google.protobuf.Timestamp")
Duration: Any = _well_known_type("google.protobuf.Duration")
Value: Any = _well_known_type("google.protobuf.Value")

__all__ = ["BoolValue", "Duration", "Int32Value", "StringValue", "Timestamp", "Value", "pb", "pb_grpc"]
