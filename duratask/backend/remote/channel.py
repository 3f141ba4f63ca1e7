"""The gRPC channel to a scheduler, and the metadata every request carries."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import grpc

from ...connection import RemoteTarget

# Histories and fan-out results can be large; the scheduler enforces its own payload limits.
MAX_RECEIVE_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_SEND_MESSAGE_BYTES = 64 * 1024 * 1024
# Ping a quiet connection so that a vanished scheduler is noticed on the long-lived work-item
# stream. No pings without calls: servers with default settings answer those with GOAWAY.
KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
# While the scheduler is away, calls fail at once (UNAVAILABLE) until the channel reconnects;
# gRPC's default backoff grows to two minutes, so cap it: a restarted scheduler is found in seconds.
RECONNECT_BACKOFF_MS = (250, 3_000)


def _user_agent() -> str:
    try:
        return f"duratask/{version('duratask')}"
    except PackageNotFoundError:  # a source tree that is not installed
        return "duratask"


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
        ("grpc.primary_user_agent", _user_agent()),
    ]


def open_channel(target: RemoteTarget) -> Any:
    """A ``grpc.aio`` channel to ``target``: TLS for https endpoints, cleartext HTTP/2 for http.

    Must be called on the event loop that will use it (grpc.aio channels belong to one loop).
    """
    if target.secure:
        return grpc.aio.secure_channel(
            target.address, grpc.ssl_channel_credentials(), options=channel_options()
        )
    return grpc.aio.insecure_channel(target.address, options=channel_options())


def call_metadata(target: RemoteTarget) -> tuple[tuple[str, str], ...]:
    """``taskhub`` on every request, and ``authorization: Bearer`` when a token is configured."""
    metadata = [("taskhub", target.taskhub)]
    if target.token is not None:
        metadata.append(("authorization", f"Bearer {target.token}"))
    return tuple(metadata)
