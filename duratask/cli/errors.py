"""How the CLI fails: one line on stderr, and an exit code that says what kind of failure it was.

Exit codes (documented in ``duratask --help``):

    0  success
    1  error (the operation failed, an instance ended FAILED/TERMINATED under --wait, ...)
    2  usage: bad arguments, bad JSON, a bad connection string
    3  not found: no instance with that id
    4  timeout: --wait ran out of time
"""

from __future__ import annotations

import os
import sys
import traceback

from ..errors import (
    ConnectionStringError,
    DurableTaskError,
    InvalidInstanceIdError,
    OrchestrationNotFoundError,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_TIMEOUT = 4

#: Set to show the traceback of unexpected errors (they are reported on one line otherwise).
DEBUG_ENV_VAR = "DURATASK_DEBUG"


class CliError(Exception):
    """An error the CLI reports as it is: ``message`` on one line, then exit ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def usage_error(message: str) -> CliError:
    return CliError(message, EXIT_USAGE)


# Checked in order, so the more specific classes come first (several errors are also ValueErrors).
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (OrchestrationNotFoundError, EXIT_NOT_FOUND),
    (ConnectionStringError, EXIT_USAGE),
    (InvalidInstanceIdError, EXIT_USAGE),
    (TimeoutError, EXIT_TIMEOUT),
    (DurableTaskError, EXIT_ERROR),
    # The backend raises plain ValueError for arguments it rejects (empty event name, bad token).
    (ValueError, EXIT_USAGE),
    (OSError, EXIT_ERROR),
)


#: Driver errors of the databases: the world's state (file missing, server down), not a duratask bug.
_DATABASE_MODULES = frozenset({"sqlite3", "psycopg", "psycopg_pool"})


def _is_database_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in _DATABASE_MODULES


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, CliError):
        return exc.exit_code
    return next((code for cls, code in _EXIT_CODES if isinstance(exc, cls)), EXIT_ERROR)


def is_expected(exc: BaseException) -> bool:
    """Errors that say something about the input or the world, not about a bug in duratask."""
    return (
        isinstance(exc, CliError)
        or _is_database_error(exc)
        or any(isinstance(exc, cls) for cls, _ in _EXIT_CODES)
    )


def describe(exc: BaseException) -> str:
    """The one-line reason for an error."""
    details = getattr(exc, "details", None)
    code = getattr(exc, "code", None)
    if callable(details) and callable(code):  # a grpc.RpcError, without importing grpc
        return one_line(f"server replied {getattr(code(), 'name', code())}: {details()}")
    text = str(exc) or type(exc).__name__
    if _is_database_error(exc):
        text = f"database error ({type(exc).__name__}): {text}"
    elif not is_expected(exc):
        text = f"unexpected {type(exc).__name__}: {text} (set {DEBUG_ENV_VAR}=1 to see the traceback)"
    elif isinstance(exc, TimeoutError) and not str(exc):
        text = "timed out"
    return one_line(text)


def one_line(text: str) -> str:
    return " ".join(text.split())


def report(exc: BaseException) -> int:
    """Write the error to stderr (one line, plus the traceback in debug mode); return the exit code."""
    if os.environ.get(DEBUG_ENV_VAR):
        traceback.print_exception(exc, file=sys.stderr)
    print(f"Error: {describe(exc)}", file=sys.stderr)
    return exit_code_for(exc)
