"""duratask errors as HTTP answers: one table, and one JSON shape for every error.

Every error answer is ``{"error": {"status": 409, "type": "InstanceStateError", "message": "..."}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import (
    ConnectionStringError,
    DurableTaskError,
    InstanceStateError,
    InvalidInstanceIdError,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    PayloadTooLargeError,
    SerializationError,
    UnauthenticatedError,
)

log = logging.getLogger("duratask.dashboard")


class HttpError(Exception):
    """An error the dashboard itself raises, with its HTTP status."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(HttpError):
    status = 400


class NotFound(HttpError):
    status = 404


class UnsupportedMediaType(HttpError):
    status = 415


# Most specific first: the first row whose type matches wins (several errors are also ValueErrors).
# Errors of the storage or scheduler the dashboard reads from are 5xx: the request was fine.
_STATUS_OF: tuple[tuple[type[BaseException], int], ...] = (
    (HttpError, 0),  # its own status
    (OrchestrationNotFoundError, 404),
    (OrchestrationAlreadyExistsError, 409),
    (InstanceStateError, 409),
    (PayloadTooLargeError, 413),
    (InvalidInstanceIdError, 400),
    (SerializationError, 400),
    (ConnectionStringError, 500),  # the dashboard's own configuration, not the request's
    (UnauthenticatedError, 502),  # the scheduler refused the dashboard's credentials
    (ConnectionError, 503),  # the scheduler or database cannot be reached
    (TimeoutError, 504),
    (DurableTaskError, 502),  # any other failure of the scheduler call (RemoteCallError, ...)
    (ValueError, 400),  # what the client and backend raise for bad arguments
)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status that answers ``exc``; ``None`` for an unexpected error."""
    for error_type, status in _STATUS_OF:
        if isinstance(exc, error_type):
            return exc.status if isinstance(exc, HttpError) else status
    return None


def error_response(
    status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"status": status, "type": error_type, "message": message}}
    return JSONResponse(body, status, headers=headers)


async def http_exception_answer(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (405 on a known path, 404 of a missing file) in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, "HTTPException", exc.detail, exc.headers)


def response_for(exc: BaseException) -> JSONResponse:
    """The JSON answer for an exception a handler raised; unexpected ones are logged, not leaked."""
    status = status_of(exc)
    if status is None:
        log.exception("dashboard: unexpected error", exc_info=exc)
        return error_response(500, "InternalError", "unexpected error; see the dashboard's log")
    if status >= 500:
        log.warning("dashboard: %s: %s", type(exc).__name__, exc)
    message = exc.message if isinstance(exc, HttpError) else str(exc)
    return error_response(status, type(exc).__name__, message)
