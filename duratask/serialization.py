"""JSON payloads: the one place values become text and back.

Dataclasses, pydantic models, ``datetime``, ``date``, ``UUID``, ``Enum``, sets and tuples are written
as plain JSON. Reading back into a rich type needs the type: from a function's annotation, or named
by the caller (``read_output_as(Order)``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar, get_type_hints

import msgspec

from .errors import SerializationError

T = TypeVar("T")


def _enc_hook(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # pydantic v2, without importing pydantic
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise NotImplementedError(f"cannot serialize {type(value).__name__}")


def _dec_hook(type_: type, obj: Any) -> Any:
    validate = getattr(type_, "model_validate", None)
    if callable(validate):
        return validate(obj)
    raise NotImplementedError(f"cannot deserialize into {type_!r}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_plain_decoder = msgspec.json.Decoder()


def to_json(value: Any) -> str | None:
    """Serialize ``value`` to JSON text; ``None`` stays ``None`` (no payload)."""
    if value is None:
        return None
    try:
        return _encoder.encode(value).decode()
    except (NotImplementedError, TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise SerializationError(
            f"value of type {type(value).__name__} is not JSON-serializable: {exc}"
        ) from exc


def from_json(text: str | bytes | None, type_: Any = Any) -> Any:
    """Parse JSON text, converting to ``type_`` when one is given."""
    if text is None or text == "":
        return None
    try:
        if type_ is Any or type_ is None or type_ is inspect.Parameter.empty:
            return _plain_decoder.decode(text)
        return msgspec.json.decode(text, type=type_, dec_hook=_dec_hook, strict=False)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
        raise SerializationError(f"cannot read JSON as {getattr(type_, '__name__', type_)}: {exc}") from exc


def input_type_of(fn: Callable[..., Any]) -> Any:
    """The annotated type of a function's second parameter (its input), or ``Any``."""
    return _annotation(fn, index=1)


def _annotation(fn: Callable[..., Any], index: int) -> Any:
    try:
        params = list(inspect.signature(fn).parameters.values())
        hints = get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return Any
    if len(params) <= index:
        return Any
    return hints.get(params[index].name, Any)
