"""The descriptor pool that duratask's generated protocol stubs register in.

Why not protobuf's default pool: the official protocol file declares no package, so its
messages have bare full names (``HistoryEvent``, ``OrchestrationInstance``, ...). The official
Python SDK registers exactly those names in the process-wide default pool, and protobuf refuses a
second registration ("duplicate symbol") whenever both are imported in one process: compatibility
tests, benchmarks, an application that uses both. So the build hook (``hatch_build.py``) points the
generated ``orchestrator_service_pb2`` at this pool. The wire format is unaffected: full names
never travel on the wire, and gRPC method paths are plain strings in ``orchestrator_service_pb2_grpc``.

The price: the well-known types inside our messages (``StringValue``, ``Timestamp``, ...) are this
pool's classes, and protobuf does not mix them with ``google.protobuf.wrappers_pb2.StringValue``
and friends. Build them with ``duratask.protocol.StringValue`` (etc.), with plain dicts
(``input={"value": text}``), or by setting fields in place (``msg.input.value = text``).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool

POOL: Any = descriptor_pool.DescriptorPool()


def add_serialized_file(serialized_file: bytes) -> Any:
    """Register a generated file in ``POOL``; return its ``FileDescriptor``.

    Its dependencies (the well-known types) are copied over from the default pool, where the
    generated module's own imports of ``google.protobuf.*_pb2`` have just put them.
    """
    file_proto = descriptor_pb2.FileDescriptorProto.FromString(serialized_file)
    for dependency in file_proto.dependency:
        _copy_from_default_pool(dependency)
    return POOL.AddSerializedFile(serialized_file)


def _copy_from_default_pool(file_name: str) -> None:
    if _has_file(file_name):
        return
    source = descriptor_pool.Default().FindFileByName(file_name)
    for dependency in source.dependencies:
        _copy_from_default_pool(dependency.name)
    POOL.AddSerializedFile(source.serialized_pb)


def _has_file(file_name: str) -> bool:
    try:
        POOL.FindFileByName(file_name)
    except KeyError:
        return False
    return True
