"""``duratask serve``: run the gRPC scheduler (SPEC §4).

``serve(...)`` blocks until SIGTERM or SIGINT, then stops cleanly: no new RPCs, every worker
stream ends (the official workers reconnect elsewhere), every unfinished work item is handed back
to the queue, and the storages close. ``start_server(...)`` is the same server on the running
event loop, for tests and embedding; ``port=0`` binds a free port (``RunningServer.port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode

import grpc

from ..backend.local import LocalBackend
from ..connection import RemoteTarget, open_backend, parse
from ..errors import ConnectionStringError
from .grpc_service import Hub, TaskHubService, handlers
from .settings import (
    DEFAULT_HOST,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PORT,
    DEFAULT_STORAGE,
    DEFAULT_TASKHUB,
    ServerSettings,
)
from .work_items import Dispatcher

log = logging.getLogger("duratask.server")

#: Calls gRPC holds for the server before it cancels more (its own default is about 1,000).
MAX_PENDING_REQUESTS = 20_000


@dataclass
class RunningServer:
    """A started server: where it listens, what it serves, how to stop it."""

    settings: ServerSettings
    port: int
    hubs: dict[str, Hub]
    _server: Any
    _stopped: bool = False

    @property
    def address(self) -> str:
        """``host:port`` to dial (what the official SDKs call ``host_address``)."""
        return f"{self.settings.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The ``Endpoint=`` connection string of the default (first) task hub."""
        return f"Endpoint=http://{self.address};TaskHub={next(iter(self.hubs))};Authentication=None"

    async def stop(self, grace: float | None = None) -> None:
        """End every work-item stream, take the results of items in flight for up to ``grace``
        seconds and hand the rest back, end the remaining RPCs, close the storage."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        # Streams end first (workers stop getting work) while completions are still taken.
        await asyncio.gather(*(hub.dispatcher.stop(drain_seconds=grace) for hub in self.hubs.values()))
        await self._server.stop(grace)
        for hub in self.hubs.values():
            await hub.backend.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def storage_for_hub(storage: str, taskhub: str) -> str:
    """``storage`` with its ``taskhub`` query parameter set to ``taskhub``."""
    if isinstance(parse(storage), RemoteTarget):
        raise ConnectionStringError(
            f"duratask serve keeps state itself: --storage must be sqlite:///, memory:// or "
            f"postgresql://, not {storage!r}"
        )
    # By hand, not urlunsplit: that would turn sqlite:////abs/path into sqlite://abs/path.
    base, _, query_text = storage.partition("?")
    query = [(k, v) for k, v in parse_qsl(query_text, keep_blank_values=True) if k != "taskhub"]
    query.append(("taskhub", taskhub))
    return f"{base}?{urlencode(query)}"


async def _open_hub(settings: ServerSettings, name: str) -> Hub:
    backend = await open_backend(storage_for_hub(settings.storage, name))
    if not isinstance(backend, LocalBackend):  # storage_for_hub refused remote targets already
        await backend.close()
        raise ConnectionStringError(f"storage {settings.storage!r} is not embedded")
    return Hub(name=name, backend=backend, dispatcher=Dispatcher(backend, settings))


def _grpc_options(settings: ServerSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", -1),
        # A second server on a busy port must fail, not share it silently.
        ("grpc.so_reuseport", 0),
        # Workers keep long streams open and may ping them; do not answer pings with GOAWAY.
        ("grpc.keepalive_permit_without_calls", 1),
        # And ping them ourselves: a worker whose machine vanished (no FIN) is noticed within
        # about 80 s, so its stream ends and its items are handed back.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
        # gRPC cancels calls that arrive while about 1,000 wait to be picked up (CANCELLED, before
        # they reach a handler): a client that starts 2,000 instances at once got some of those.
        # A burst of that size is ordinary for a scheduler; the bound stays, higher.
        ("grpc.server.max_pending_requests", MAX_PENDING_REQUESTS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_REQUESTS),
        *settings.extra_grpc_options,
    ]


async def start_server(settings: ServerSettings | None = None, **overrides: Any) -> RunningServer:
    """Open every task hub's storage and start serving; ``overrides`` are ``ServerSettings`` fields."""
    settings = replace(settings or ServerSettings(), **overrides)
    if not settings.taskhubs:
        raise ValueError("serve needs at least one task hub")
    hubs: dict[str, Hub] = {}
    try:
        for name in dict.fromkeys(settings.taskhubs):
            hubs[name] = await _open_hub(settings, name)
        server = grpc.aio.server(options=_grpc_options(settings))
        server.add_generic_rpc_handlers((handlers(TaskHubService(settings), hubs, settings.auth_token),))
        try:
            port = server.add_insecure_port(f"{settings.host}:{settings.port}")
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen on {settings.host}:{settings.port}")
        await server.start()
    except BaseException:
        for hub in hubs.values():
            await hub.backend.close()
        raise
    log.info("duratask serve: gRPC on %s:%d, task hubs %s", settings.host, port, ", ".join(hubs))
    return RunningServer(settings=settings, port=port, hubs=hubs, _server=server)


def serve(
    storage: str = DEFAULT_STORAGE,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    dashboard_port: int | None = None,
    taskhubs: Sequence[str] = (DEFAULT_TASKHUB,),
    auth_token: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    shutdown_grace_seconds: float = ServerSettings.shutdown_grace_seconds,
) -> None:
    """Run the server until SIGTERM or SIGINT (blocking); the CLI's ``duratask serve``."""
    settings = ServerSettings(
        storage=storage,
        host=host,
        port=port,
        taskhubs=tuple(taskhubs) or (DEFAULT_TASKHUB,),
        auth_token=auth_token or None,
        max_message_bytes=max_message_bytes,
        shutdown_grace_seconds=shutdown_grace_seconds,
    )
    asyncio.run(_serve_until_signalled(settings, dashboard_port))


async def _serve_until_signalled(settings: ServerSettings, dashboard_port: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    running = await start_server(settings)
    dashboard = await _start_dashboard(settings, dashboard_port)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        # A dashboard that cannot start (its port is taken) ends the server too, loudly.
        await asyncio.wait(
            {stopped, *([dashboard] if dashboard else [])}, return_when=asyncio.FIRST_COMPLETED
        )
        if dashboard is not None and dashboard.done():
            dashboard.result()  # raises what stopped it
        log.info("duratask serve: stopping")
    finally:
        stopped.cancel()
        if dashboard is not None:
            dashboard.cancel()
            await asyncio.gather(dashboard, return_exceptions=True)
        await running.stop()


async def _start_dashboard(settings: ServerSettings, port: int | None) -> asyncio.Task[None] | None:
    """The dashboard on ``port`` over the same storage (the first task hub), until cancelled;
    behind the server's ``--auth-token`` too."""
    if port is None:
        return None
    from ..dashboard import run_dashboard

    connection = storage_for_hub(settings.storage, settings.taskhubs[0])
    task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
        run_dashboard(connection, settings.host, port, settings.auth_token), name="duratask-dashboard"
    )
    return task
