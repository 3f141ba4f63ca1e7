"""Long-running commands: ``worker`` (runs a user's Worker), ``serve`` and ``dashboard``."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import sys
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer

from ..connection import RemoteTarget, parse, resolve
from ..worker import Worker
from .app import Connection, app
from .errors import CliError, one_line, usage_error

_LOG_LEVELS = ("debug", "info", "warning", "error")

LogLevel = Annotated[str, typer.Option("--log-level", help=f"One of {', '.join(_LOG_LEVELS)}.")]


def _configure_logging(level: str) -> None:
    if level.lower() not in _LOG_LEVELS:
        raise usage_error(f"--log-level must be one of {', '.join(_LOG_LEVELS)}, not {level!r}")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- worker -----------------------------------------------------------------------------------------


@app.command(rich_help_panel="Processes")
def worker(
    target: Annotated[
        str,
        typer.Argument(help="Where the Worker is: MODULE:ATTRIBUTE, e.g. myapp.tasks:worker (or a factory).",
                       show_default=False),
    ],
    connection: Annotated[
        str | None,
        typer.Option(
            "--connection",
            "-c",
            help="Connection string overriding the worker's own. Default: the one the worker was built with, "
            "else $DURATASK_CONNECTION_STRING, else sqlite:///duratask.db.",
            show_default=False,
        ),
    ] = None,
    max_orchestrations: Annotated[
        int | None, typer.Option("--max-orchestrations", min=1, help="Orchestrations run at once.")
    ] = None,
    max_activities: Annotated[int | None, typer.Option("--max-activities", min=1, help="Activities run at once.")] = None,
    app_dir: Annotated[str, typer.Option("--app-dir", help="Directory to import MODULE from.")] = ".",
    log_level: LogLevel = "info",
) -> None:
    """Run a Worker defined in your code until Ctrl+C or SIGTERM."""
    _configure_logging(log_level)
    found = load_worker(target, app_dir)
    if connection is not None:
        if getattr(found, "_backend", None) is not None:
            raise usage_error(f"{target} was built with a backend object; --connection cannot replace it")
        parse(connection)  # fail here, with the CLI's message, rather than inside the worker's loop
        # Worker has no public setter; the string is only read when start() opens the backend,
        # so setting it on a worker that has no backend yet is equivalent to passing it to __init__.
        found._connection_string = connection
    if max_orchestrations is not None:
        found.max_concurrent_orchestrations = max_orchestrations
    if max_activities is not None:
        found.max_concurrent_activities = max_activities
    print(
        f"duratask worker {target}: {_registered(found)}; "
        f"connection {redact(resolve(found._connection_string))}. Ctrl+C stops it.",
        file=sys.stderr,
        flush=True,
    )
    found.run()


def load_worker(target: str, app_dir: str = ".") -> Worker:
    """Import ``MODULE:ATTRIBUTE`` (attribute may be dotted) and return the Worker it names.

    The attribute is a ``Worker``, or a callable taking no arguments that returns one. ``app_dir``
    goes first on ``sys.path`` (as uvicorn does), so a module next to the shell's directory imports.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise usage_error(f"{target!r} is not MODULE:ATTRIBUTE, e.g. myapp.tasks:worker")
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    module = _import(module_name)
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise usage_error(f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if isinstance(obj, Worker):
        return obj
    if not callable(obj):
        raise usage_error(f"{target} is a {type(obj).__name__}, not a duratask.Worker or a function returning one")
    made = obj()
    if not isinstance(made, Worker):
        raise usage_error(f"{target}() returned a {type(made).__name__}, not a duratask.Worker")
    return made


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the module itself missing is a usage error; a missing import inside it is the module's.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise usage_error(f"cannot import module {module_name!r}: {exc}") from None
        raise CliError(f"importing {module_name!r} failed: {_where(exc)}") from exc
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {_where(exc)}") from exc


def _where(exc: BaseException) -> str:
    """``Type: message (file, line N)``: where in the user's code an import blew up."""
    text = f"{type(exc).__name__}: {one_line(str(exc))}"
    if isinstance(exc, SyntaxError):
        return text
    frames = [f for f in inspect.getinnerframes(exc.__traceback__)] if exc.__traceback__ else []
    user = [f for f in frames if "importlib" not in f.filename]
    if user:
        text += f" ({user[-1].filename}, line {user[-1].lineno})"
    return text


def _registered(found: Worker) -> str:
    # Read-only peek at the registries, only to tell the user what this process will run.
    orchestrators = sorted(getattr(found, "_orchestrators", {}))
    activities = sorted(getattr(found, "_activities", {}))
    return f"orchestrators {', '.join(orchestrators) or '(none)'}; activities {', '.join(activities) or '(none)'}"


def redact(connection_string: str) -> str:
    """The connection string with its password or token masked, for printing."""
    scheme, sep, _ = connection_string.partition("://")
    if sep and "=" not in scheme:  # URL form; the Endpoint= form has "=" before any "://"
        parts = urlsplit(connection_string)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            return urlunsplit(parts._replace(netloc=netloc))
        return connection_string
    pieces = []
    for piece in connection_string.split(";"):
        key, sep, _ = piece.partition("=")
        pieces.append(f"{key}=***" if sep and key.strip().lower() == "token" else piece)
    return ";".join(pieces)


# --- serve and dashboard --------------------------------------------------------------------------------


def _call_entry_point(module_name: str, function_name: str, what: str, *args: Any, **kwargs: Any) -> None:
    """Import ``module_name`` lazily (it pulls in gRPC or the web stack) and run its entry point."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CliError(f"{what} is not available in this installation ({module_name} is missing)") from None
        raise
    entry = getattr(module, function_name, None)
    if not callable(entry):
        raise CliError(f"{what} is not available in this installation ({module_name}.{function_name} is missing)")
    result = entry(*args, **kwargs)
    if inspect.isawaitable(result):
        asyncio.run(_await(result))


async def _await(awaitable: Any) -> None:
    await awaitable


@app.command(rich_help_panel="Processes")
def serve(
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            "--connection",
            "-c",
            help="Where state lives: sqlite:///file.db, memory:// or postgresql://... "
            "Default: $DURATASK_CONNECTION_STRING, else sqlite:///duratask.db.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="gRPC port.")] = 8080,
    dashboard_port: Annotated[
        int, typer.Option("--dashboard-port", min=0, max=65535, help="Dashboard HTTP port.")
    ] = 8082,
    no_dashboard: Annotated[bool, typer.Option("--no-dashboard", help="Serve gRPC only.")] = False,
    taskhub: Annotated[
        list[str] | None,
        typer.Option("--taskhub", help="Task hub to serve (repeat for several). Default: default.", show_default=False),
    ] = None,
    auth_token: Annotated[
        str | None, typer.Option("--auth-token", help="Require 'authorization: Bearer TOKEN' on every request.")
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Run the scheduler server (Durable Task gRPC protocol) and its dashboard."""
    resolved = resolve(storage)
    if isinstance(parse(resolved), RemoteTarget):
        raise usage_error("serve keeps state itself: --storage must be sqlite://, memory:// or postgresql://")
    _configure_logging(log_level)
    _call_entry_point(
        "duratask.server.app",
        "serve",
        "duratask serve",
        storage=resolved,
        host=host,
        port=port,
        dashboard_port=None if no_dashboard else dashboard_port,
        taskhubs=list(taskhub or ["default"]),
        auth_token=auth_token,
    )


@app.command(rich_help_panel="Processes")
def dashboard(
    connection: Connection = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="HTTP port.")] = 8082,
    auth_token: Annotated[
        str | None,
        typer.Option(
            "--auth-token",
            help="Require TOKEN on every request: the password of HTTP Basic credentials, or 'Authorization: Bearer TOKEN'.",
        ),
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Run the web dashboard for any connection string."""
    resolved = resolve(connection)
    parse(resolved)
    _configure_logging(log_level)
    # Positional, as the server calls it too: run_dashboard(connection_string, host, port, auth_token).
    _call_entry_point(
        "duratask.dashboard.app", "run_dashboard", "duratask dashboard", resolved, host, port, auth_token
    )
