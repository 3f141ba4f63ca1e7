"""JSON payloads: the one place values become text and back.

Dataclasses, pydantic models, ``datetime``, ``date``, ``UUID``, ``Enum``, sets and tuples are written
as plain JSON. Reading back into a rich type needs the type: from a function's annotation, or named
by the caller (``read_output_as(Order)``).
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

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
    return _cached(_input_type, fn)


def result_type_of(fn_or_name: Callable[..., Any] | str) -> Any:
    """The type to decode a function's result into: its return annotation, else ``Any``.

    For generator and coroutine annotations it is the type they finally return.
    """
    if isinstance(fn_or_name, str):
        return Any
    return _cached(_result_type, fn_or_name)


def _cached(compute: Callable[[Callable[..., Any]], Any], fn: Callable[..., Any]) -> Any:
    """Type hints are slow to resolve and asked for on every call: remember them per function."""
    try:
        return _hint_cache(compute, fn)
    except TypeError:  # an unhashable callable object
        return compute(fn)


@functools.lru_cache(maxsize=4096)
def _hint_cache(compute: Callable[[Callable[..., Any]], Any], fn: Callable[..., Any]) -> Any:
    return compute(fn)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return get_type_hints(fn)
    except (NameError, TypeError, AttributeError, SyntaxError):  # unresolvable or odd annotations
        return {}


def _input_type(fn: Callable[..., Any]) -> Any:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return Any
    if len(params) <= 1:
        return Any
    return _hints(fn).get(params[1].name, Any)


#: For these return annotations, the index of the type argument that is the final result.
_RESULT_ARG = {
    collections.abc.Generator: 2,
    collections.abc.Coroutine: 2,
    collections.abc.Awaitable: 0,
}


def _result_type(fn: Callable[..., Any]) -> Any:
    hint = _hints(fn).get("return", Any)
    origin = get_origin(hint)
    if origin in _RESULT_ARG:
        args = get_args(hint)
        index = _RESULT_ARG[origin]
        return args[index] if len(args) > index else Any
    if origin in (collections.abc.Iterator, collections.abc.Iterable) or isinstance(hint, TypeVar):
        return Any
    return hint
