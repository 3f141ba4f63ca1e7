"""Tunables of ``duratask serve`` (SPEC §4 fixes the user-facing ones; the rest are for tests and tuning)."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_STORAGE = "sqlite:///duratask.db"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_TASKHUB = "default"
#: gRPC's own default receive limit; requests over it get RESOURCE_EXHAUSTED naming the limit.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    storage: str = DEFAULT_STORAGE
    host: str = DEFAULT_HOST
    #: 0 picks a free port (tests); the bound port is on the running server.
    port: int = DEFAULT_PORT
    taskhubs: tuple[str, ...] = (DEFAULT_TASKHUB,)
    auth_token: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: Idle work-item streams get a HealthPing this often (the official workers give up on a
    #: stream silent for 120 s; proxies often cut idle HTTP/2 streams sooner).
    health_ping_seconds: float = 15.0
    #: Concurrency of a worker stream that does not state its limits (0 in the request).
    default_stream_concurrency: int = 100
    #: Most work items leased in one round trip to the storage.
    lease_batch: int = 100
    #: While work is in flight, how long a pump lets finished work accumulate before the next lease.
    lease_gather_seconds: float = 0.002
    #: How long an item no connected worker's filters accept is held before it goes back.
    park_seconds: float = 5.0
    max_parked: int = 1000
    #: After a refused completion, how long the item stays with its worker before it goes back.
    refused_hand_back_seconds: float = 5.0
    #: Largest page a QueryInstances / ListInstanceIds answer holds (the official Python client
    #: asks for 2^31-1 and follows continuation tokens).
    max_page_size: int = 1000
    #: Events per StreamInstanceHistory chunk.
    history_chunk_events: int = 200
    #: Most history events kept between an instance's episodes (``server.history_cache``), in all.
    history_cache_events: int = 100_000
    #: Entity batches go out as ``entityRequestV2`` (what the Durable Task Scheduler sends); off:
    #: as the older ``entityRequest``. The official SDKs read both.
    entity_request_v2: bool = True
    #: Most operations in one entity batch; the rest follow in the next, in order.
    max_entity_batch: int = 100
    #: Grace period of a stop: in-flight RPCs may finish this long.
    shutdown_grace_seconds: float = 5.0
    extra_grpc_options: tuple[tuple[str, int | str], ...] = field(default_factory=tuple)
