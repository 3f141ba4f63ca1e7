"""Connection strings (SPEC §1): parse one, and open the Backend it names.

sqlite:///path/to/file.db[?taskhub=NAME&durable=false&lease_seconds=30&max_payload_bytes=N]
memory://[?taskhub=NAME]
postgresql://user:password@host:port/dbname[?taskhub=NAME]
Endpoint=http://host:port;TaskHub=NAME;Authentication=None
Endpoint=http://host:port;TaskHub=NAME;Authentication=Token;Token=SECRET
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .errors import ConnectionStringError

if TYPE_CHECKING:
    from .backend.api import Backend

ENV_VAR = "DURATASK_CONNECTION_STRING"
DEFAULT_CONNECTION_STRING = "sqlite:///duratask.db"
_EMBEDDED_OPTIONS = {"taskhub", "durable", "lease_seconds", "max_payload_bytes", "migrate"}
_ENDPOINT_KEYS = {"endpoint", "taskhub", "authentication", "token"}


@dataclass(frozen=True)
class EmbeddedTarget:
    """State kept by this process's own storage: SQLite file, process memory, or PostgreSQL."""

    scheme: str  # "sqlite" | "memory" | "postgresql"
    location: str  # file path, "" for memory, or the PostgreSQL URL without duratask's options
    taskhub: str = "default"
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteTarget:
    """A scheduler server reached over the Durable Task gRPC protocol."""

    address: str  # host:port
    secure: bool
    taskhub: str
    token: str | None = None


Target = EmbeddedTarget | RemoteTarget


def resolve(connection_string: str | None) -> str:
    """The string to use: the argument, else the environment variable, else the default."""
    if connection_string:
        return connection_string
    return os.environ.get(ENV_VAR) or DEFAULT_CONNECTION_STRING


def parse(connection_string: str) -> Target:
    """Parse a connection string; raises ``ConnectionStringError`` saying what is wrong."""
    text = connection_string.strip()
    if not text:
        raise ConnectionStringError("empty connection string")
    if "=" in text.split("://", 1)[0] or text.lower().startswith("endpoint"):
        return _parse_endpoint(text)
    scheme, sep, _ = text.partition("://")
    if not sep:
        raise ConnectionStringError(
            f"cannot read connection string {text!r}: expected sqlite:///PATH, memory://, "
            "postgresql://... or Endpoint=...;TaskHub=...;Authentication=..."
        )
    parts = urlsplit(text)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    taskhub = options.pop("taskhub", "default") or "default"
    scheme = scheme.lower()
    if scheme == "sqlite":
        _check_options(options, text)
        path = parts.path.removeprefix("/")
        if parts.netloc or not path:
            raise ConnectionStringError(f"sqlite connection string {text!r} needs a path: sqlite:///file.db")
        return EmbeddedTarget("sqlite", path, taskhub, options)
    if scheme == "memory":
        _check_options(options, text)
        return EmbeddedTarget("memory", "", taskhub, options)
    if scheme in ("postgresql", "postgres"):
        ours = {k: options.pop(k) for k in list(options) if k in _EMBEDDED_OPTIONS}
        location = urlunsplit(("postgresql", parts.netloc, parts.path, _join_query(options), ""))
        if not parts.netloc and not parts.path.strip("/"):
            raise ConnectionStringError(f"postgresql connection string {text!r} names no server or database")
        return EmbeddedTarget("postgresql", location, taskhub, ours)
    raise ConnectionStringError(
        f"unknown connection string scheme {scheme!r} in {text!r}: use sqlite, memory, postgresql or Endpoint="
    )


def _join_query(options: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in options.items())


def _check_options(options: dict[str, str], text: str) -> None:
    unknown = set(options) - _EMBEDDED_OPTIONS
    if unknown:
        raise ConnectionStringError(
            f"unknown option(s) {', '.join(sorted(unknown))} in {text!r}; known: {', '.join(sorted(_EMBEDDED_OPTIONS))}"
        )


def _parse_endpoint(text: str) -> RemoteTarget:
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise ConnectionStringError(f"malformed part {part!r} in connection string (expected Key=Value)")
        if key not in _ENDPOINT_KEYS:
            raise ConnectionStringError(
                f"unknown key {key!r} in connection string; expected Endpoint, TaskHub, Authentication, Token"
            )
        values[key] = value.strip()
    for required in ("endpoint", "taskhub", "authentication"):
        if not values.get(required):
            raise ConnectionStringError(f"connection string is missing {required.title()}=")
    endpoint = urlsplit(values["endpoint"])
    if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
        raise ConnectionStringError(
            f"Endpoint must be http://host:port or https://host:port, got {values['endpoint']!r}"
        )
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    auth = values["authentication"].lower()
    token = values.get("token")
    if auth == "none":
        token = None
    elif auth in ("token", "bearer"):
        if not token:
            raise ConnectionStringError("Authentication=Token needs Token=SECRET")
    else:
        raise ConnectionStringError(
            f"unsupported Authentication={values['authentication']!r}; duratask supports None and Token"
        )
    host = endpoint.hostname if ":" not in endpoint.hostname else f"[{endpoint.hostname}]"
    return RemoteTarget(f"{host}:{port}", endpoint.scheme == "https", values["taskhub"], token)


async def open_backend(connection_string: str | None = None, **worker_limits: int) -> Backend:
    """Open the Backend a connection string names (storage migrated and ready).

    ``worker_limits`` (``max_concurrent_orchestrations``, ``max_concurrent_activities``) are
    announced to a remote scheduler, which sends no more work than that at once.
    """
    target = parse(resolve(connection_string))
    if isinstance(target, RemoteTarget):
        from .backend.remote import RemoteBackend

        backend: Backend = await RemoteBackend.connect(target, **worker_limits)
        return backend
    return await _open_embedded(target)


async def _open_embedded(target: EmbeddedTarget) -> Backend:
    from .backend.local import BackendOptions, LocalBackend
    from .storage.base import Storage

    opts = target.options
    try:
        options = BackendOptions(
            max_payload_bytes=int(opts.get("max_payload_bytes", BackendOptions.max_payload_bytes)),
            lease_seconds=float(opts.get("lease_seconds", BackendOptions.lease_seconds)),
        )
    except ValueError as exc:
        raise ConnectionStringError(f"bad numeric option in connection string: {exc}") from None
    durable = opts.get("durable", "true").lower() not in ("false", "0", "no", "off")
    migrate = opts.get("migrate", "true").lower() not in ("false", "0", "no", "off")
    storage: Storage
    if target.scheme == "postgresql":
        from .storage.postgres import open_postgres_storage

        storage = await open_postgres_storage(target.location, target.taskhub, migrate=migrate)
    else:
        from .storage.sqlite import open_sqlite_storage

        path = ":memory:" if target.scheme == "memory" else target.location
        # A new in-memory database has nothing to protect: it is always migrated.
        storage = await open_sqlite_storage(
            path, target.taskhub, durable=durable, migrate=migrate or target.scheme == "memory"
        )
    return LocalBackend(storage, options)
