"""gRPC status codes as duratask errors: one table, so a remote call fails the way the embedded
backend's would (``OrchestrationNotFoundError``, ``InstanceStateError``, ...).

The errors below are what is left over: a scheduler that cannot be reached, a task hub it does
not serve, and any other failure of a call. All derive from ``DurableTaskError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ...errors import (
    InstanceStateError,
    InvalidInstanceIdError,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    PayloadTooLargeError,
    RemoteCallError,
    SchedulerUnavailableError,
    TaskHubNotFoundError,
    UnauthenticatedError,
)

Code = grpc.StatusCode


@dataclass(frozen=True)
class CallContext:
    """What a failed call was about, to word its error."""

    address: str
    instance_id: str | None = None


_Factory = Callable[[str, CallContext], Exception]


def _not_found(message: str, ctx: CallContext) -> Exception:
    # NOT_FOUND names either the instance or, with duratask's server, the task hub of the call.
    about_instance = ctx.instance_id is not None and ctx.instance_id in message
    if not about_instance and re.search(r"task ?hub", message, re.IGNORECASE):
        return TaskHubNotFoundError(message, Code.NOT_FOUND)
    if ctx.instance_id is None:
        return RemoteCallError(message, Code.NOT_FOUND)
    return OrchestrationNotFoundError(ctx.instance_id)


def _already_exists(message: str, ctx: CallContext) -> Exception:
    return OrchestrationAlreadyExistsError(ctx.instance_id or "")


_SIZES = (
    # duratask's own wording (PayloadTooLargeError), relayed by its server
    re.compile(r"(?P<what>.+?) is (?P<size>\d+) bytes, over the limit of (?P<limit>\d+) bytes"),
    # gRPC's, when a message exceeds the channel's maximum
    re.compile(r"(?P<what>message) larger than max \((?P<size>\d+) vs\. (?P<limit>\d+)\)", re.IGNORECASE),
)


def _payload_too_large(message: str, ctx: CallContext) -> Exception:
    match = next((m for m in (p.search(message) for p in _SIZES) if m), None)
    if match is None:
        error = PayloadTooLargeError("payload", 0, 0)
    else:
        error = PayloadTooLargeError(match["what"], int(match["size"]), int(match["limit"]))
    error.args = (message,)  # the scheduler's own words
    return error


def _invalid_argument(message: str, ctx: CallContext) -> Exception:
    if re.search(r"instance ?id", message, re.IGNORECASE):
        return InvalidInstanceIdError(message)
    return ValueError(message)


def _unauthenticated(message: str, ctx: CallContext) -> Exception:
    return UnauthenticatedError(f"the scheduler at {ctx.address} refused the credentials: {message}")


def _unavailable(message: str, ctx: CallContext) -> Exception:
    return SchedulerUnavailableError(
        f"cannot reach the Durable Task scheduler at {ctx.address}: {message}", Code.UNAVAILABLE
    )


_BY_CODE: dict[Any, _Factory] = {
    Code.NOT_FOUND: _not_found,
    Code.ALREADY_EXISTS: _already_exists,
    Code.FAILED_PRECONDITION: lambda message, ctx: InstanceStateError(message),
    Code.RESOURCE_EXHAUSTED: _payload_too_large,
    Code.INVALID_ARGUMENT: _invalid_argument,
    Code.UNAUTHENTICATED: _unauthenticated,
    Code.PERMISSION_DENIED: _unauthenticated,
    Code.UNAVAILABLE: _unavailable,
    Code.DEADLINE_EXCEEDED: lambda message, ctx: TimeoutError(message),
}


def error_from_rpc(error: grpc.RpcError, ctx: CallContext) -> Exception:
    """The duratask error for a failed gRPC call (``error`` has ``code()`` and ``details()``)."""
    code = error.code()
    message = error.details() or code.name
    factory = _BY_CODE.get(code)
    if factory is None:
        return RemoteCallError(f"the scheduler at {ctx.address} answered {code.name}: {message}", code)
    return factory(message, ctx)
