"""The dashboard application (SPEC §6): the JSON API and the static page, served by uvicorn.

``create_app(connection_string)`` is the ASGI app (its lifespan opens and closes the client).
``run_dashboard(connection_string, host, port)`` serves it until cancelled: ``duratask serve
--dashboard-port`` runs it as a task on the server's own event loop, ``duratask dashboard`` on its own.
Neither installs signal handlers: the process that embeds the dashboard owns its signals, and
cancelling the task is how it stops (gracefully: open requests finish, the client closes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..client import DurableTaskClient
from ..connection import parse
from .api import DashboardApi
from .errors import error_response, http_exception_answer

log = logging.getLogger("duratask.dashboard")

STATIC_DIR = Path(__file__).parent / "static"

# The page loads only its own files: no inline script, nothing from elsewhere, never framed.
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        (
            b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        ),
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # Revalidate every time (ETags make that cheap): an upgraded duratask serves its new page at once.
    (b"cache-control", b"no-cache"),
]


class SecurityHeaders:
    """ASGI middleware adding ``_SECURITY_HEADERS`` to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TokenGate:
    """ASGI middleware: every HTTP request must carry ``token``, as the password of HTTP Basic
    credentials (what a browser prompts for; any user name) or as ``Authorization: Bearer TOKEN``
    (scripts). Otherwise 401 with a Basic challenge, so that a browser asks for it.

    ``duratask serve --auth-token`` guards its dashboard with the same token as its gRPC port: the
    dashboard can terminate and purge, so it must not be the open door beside a locked one."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("the dashboard's token must not be empty")
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._admits(scope):
            await self.app(scope, receive, send)
            return
        answer = error_response(
            401,
            "UnauthenticatedError",
            "this dashboard needs its token: as the password of HTTP Basic credentials (any user "
            "name) or as 'Authorization: Bearer TOKEN'",
            headers={"WWW-Authenticate": 'Basic realm="duratask dashboard", charset="UTF-8"'},
        )
        await answer(scope, receive, send)

    def _admits(self, scope: Scope) -> bool:
        given = dict(scope.get("headers") or ()).get(b"authorization", b"")
        scheme, _, credentials = given.partition(b" ")
        scheme = scheme.lower()
        if scheme == b"bearer":
            return hmac.compare_digest(credentials.strip(), self._token)
        if scheme == b"basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(decoded.partition(b":")[2], self._token)
        return False


async def _index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def create_app(
    connection_string: str, *, client: DurableTaskClient | None = None, auth_token: str | None = None
) -> Starlette:
    """The dashboard for ``connection_string`` (any form of SPEC §1).

    The client opens when the app starts (its lifespan) and closes when it stops; pass an already
    opened ``client`` to share one, which the app then leaves open. With ``auth_token`` every
    request must carry it (``TokenGate``).
    """
    parse(connection_string)  # a malformed string fails here, not on the first request
    owned = client is None
    dashboard_client = client if client is not None else DurableTaskClient(connection_string)
    api = DashboardApi(connection_string, dashboard_client)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if owned:
            await dashboard_client.__aenter__()
        try:
            yield
        finally:
            if owned:
                await dashboard_client.close()

    routes = [
        Route("/", _index, methods=["GET"]),
        *api.routes(),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_exception_answer}
    )
    if auth_token:  # as for the server's gRPC port, an empty token guards nothing
        app.add_middleware(TokenGate, token=auth_token)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so a 401 carries the headers too
    return app


# --- serving --------------------------------------------------------------------------------------


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: a free one); ``OSError`` if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


async def serve_app(app: ASGIApp, sock: socket.socket) -> None:
    """Serve ``app`` on the listening ``sock`` until cancelled, then stop gracefully and re-raise."""
    config = uvicorn.Config(
        app,
        log_config=None,  # leave the embedding process's logging alone
        access_log=False,  # the page polls; an access line per poll drowns the server's own log
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = _EmbeddedServer(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise


async def run_dashboard(connection_string: str, host: str, port: int, auth_token: str | None = None) -> None:
    """Serve the dashboard for ``connection_string`` on ``http://host:port/`` until cancelled; with
    ``auth_token``, only to requests that carry it.

    The connection opens first, so that a storage or scheduler that cannot be used fails here with
    its own error rather than on the first page load.
    """
    client = DurableTaskClient(connection_string)
    await client.__aenter__()
    try:
        sock = bind(host, port)
        where = f"[{host}]" if ":" in host else host
        log.info("duratask dashboard: http://%s:%d/", where, sock.getsockname()[1])
        await serve_app(create_app(connection_string, client=client, auth_token=auth_token), sock)
    finally:
        await client.close()
