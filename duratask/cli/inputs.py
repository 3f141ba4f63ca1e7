"""Reading option values: JSON payloads, ISO 8601 times, runtime statuses.

Each reader raises a usage ``CliError`` naming the option, so a typo costs one clear line.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..models import OrchestrationRuntimeStatus, status_from_name
from .errors import one_line, usage_error


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; other SDKs could not read them back.
    raise ValueError(f"{name} is not valid JSON")


def json_value(text: str | None, option: str) -> Any:
    """The value of a JSON option: JSON text, ``@FILE`` for a file's content, ``-`` for stdin."""
    if text is None:
        return None
    source = text
    if text == "-":
        source = sys.stdin.read()
    elif text.startswith("@"):
        try:
            source = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise usage_error(f"{option}: cannot read {text[1:]!r}: {exc.strerror or exc}") from None
    try:
        return json.loads(source, parse_constant=_reject_constant)
    except ValueError as exc:
        hint = "" if text.startswith(("@", "-")) else f"; quote strings, e.g. {option} '\"Tokyo\"'"
        raise usage_error(f"{option} is not valid JSON ({one_line(str(exc))}){hint}") from None


def timestamp(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 time; one without a time zone is taken as UTC."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise usage_error(
            f"{option}: {text!r} is not an ISO 8601 time such as 2030-01-31T12:00:00Z or 2030-01-31"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def statuses(values: list[str] | None, option: str = "--status") -> list[OrchestrationRuntimeStatus] | None:
    """Runtime statuses from repeated and/or comma-separated names, case-insensitive."""
    if not values:
        return None
    names = [name for value in values for name in value.split(",") if name.strip()]
    try:
        return [status_from_name(name) for name in names] or None
    except ValueError as exc:
        raise usage_error(f"{option}: {exc}") from None
