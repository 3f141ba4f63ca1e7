"""How duratask's errors become gRPC statuses: one table, read by every RPC of the server.

The official clients turn statuses back into their own errors (``grpc.RpcError`` in Python,
``ServiceError`` in JavaScript) and duratask's remote client maps them to duratask's errors, so
the choice below is what a caller on any side sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from ..errors import (
    ConnectionStringError,
    InstanceStateError,
    InvalidInstanceIdError,
    LeaseLostError,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    PayloadTooLargeError,
    SerializationError,
    UnauthenticatedError,
)
from ..protocol.convert import UnsupportedMessageError


class RpcError(Exception):
    """An RPC refused by the server itself, with the status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.NOT_FOUND, message)


# Most specific first: the first row whose type matches wins (several errors are also ValueErrors).
_STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (OrchestrationNotFoundError, grpc.StatusCode.NOT_FOUND),
    (OrchestrationAlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (InstanceStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (LeaseLostError, grpc.StatusCode.ABORTED),
    (PayloadTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (InvalidInstanceIdError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedMessageError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConnectionStringError, grpc.StatusCode.INVALID_ARGUMENT),
    (SerializationError, grpc.StatusCode.INVALID_ARGUMENT),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    message: str


def status_of(exc: BaseException) -> Status | None:
    """The status that answers ``exc``; ``None`` for an unexpected error (an INTERNAL, logged)."""
    if isinstance(exc, RpcError):
        return Status(exc.code, exc.message)
    for kind, code in _STATUS_OF:
        if isinstance(exc, kind):
            return Status(code, str(exc))
    return None
