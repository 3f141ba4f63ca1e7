"""Reading what a request asks for: list filters from the query string, action bodies from JSON.

Pure functions over plain values; anything malformed is a ``BadRequest`` saying what and where.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from ..models import OrchestrationQuery, OrchestrationRuntimeStatus, status_from_name
from .errors import BadRequest

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 500
BodyT = TypeVar("BodyT", bound=msgspec.Struct)
_LIST_PARAMS = {"status", "prefix", "created_from", "created_to", "page_size", "continuation_token"}


def list_query(params: Mapping[str, Sequence[str]]) -> OrchestrationQuery:
    """``?status=RUNNING&status=failed&prefix=order-&created_from=ISO&created_to=ISO&page_size=25
    &continuation_token=...`` as an ``OrchestrationQuery``; ``status`` may also be comma-separated."""
    unknown = sorted(set(params) - _LIST_PARAMS)
    if unknown:
        raise BadRequest(
            f"unknown query parameter {unknown[0]!r}; expected {', '.join(sorted(_LIST_PARAMS))}"
        )
    return OrchestrationQuery(
        runtime_status=_statuses(params.get("status", ())),
        created_from=_moment("created_from", _single(params, "created_from")),
        created_to=_moment("created_to", _single(params, "created_to")),
        instance_id_prefix=_single(params, "prefix") or None,
        page_size=_page_size(_single(params, "page_size")),
        continuation_token=_single(params, "continuation_token") or None,
    )


def _single(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name, ())
    if len(values) > 1:
        raise BadRequest(f"query parameter {name!r} given {len(values)} times; give it once")
    return values[0] if values else None


def _statuses(values: Sequence[str]) -> list[OrchestrationRuntimeStatus] | None:
    names = [name for value in values for name in value.split(",") if name.strip()]
    if not names:
        return None
    try:
        return [status_from_name(name) for name in names]
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _moment(name: str, text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"{name} {text!r} is not an ISO 8601 date-time (e.g. 2024-05-01T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # naive means UTC


def _page_size(text: str | None) -> int:
    if not text:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(text)
    except ValueError:
        raise BadRequest(f"page_size {text!r} is not a whole number") from None
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise BadRequest(f"page_size must be between 1 and {MAX_PAGE_SIZE}, not {size}")
    return size


# --- action bodies --------------------------------------------------------------------------------
# Unknown fields are refused: a misspelt "reson" should not silently do without a reason.


class RaiseEventBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    data: Any = None


class TerminateBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    output: Any = None
    recursive: bool = True


class ReasonBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: str | None = None


class PurgeBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    recursive: bool = True


def action_body(raw: bytes, body_type: type[BodyT]) -> BodyT:
    """Decode an action's JSON body; an empty body means every field takes its default."""
    try:
        return msgspec.json.decode(raw.strip() or b"{}", type=body_type)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
