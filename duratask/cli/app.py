"""The ``duratask`` Typer app, the options every command shares, and how commands reach the client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from ..client import DurableTaskClient
from .errors import report

T = TypeVar("T")

_EPILOG = (
    "Connection strings: sqlite:///file.db, memory://, postgresql://user:pw@host/db, "
    "Endpoint=http://host:8080;TaskHub=default;Authentication=None. "
    "Exit codes: 0 ok, 1 error, 2 usage (bad arguments, JSON or connection string), 3 instance not found, "
    "4 timed out."
)


class _ReportingGroup(TyperGroup):
    """Turns any error a command raises into one line on stderr and an exit code (no traceback)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # exits and usage errors: handled by main()
            raise
        except Exception as exc:  # noqa: BLE001  (the point: no traceback reaches the user)
            raise typer.Exit(report(exc)) from None


app = typer.Typer(
    name="duratask",
    cls=_ReportingGroup,
    help="Run and manage durable orchestrations: start, inspect, signal and purge instances; run workers, "
    "the scheduler server and the dashboard.",
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Connection = Annotated[
    str | None,
    typer.Option(
        "--connection",
        "-c",
        help="Connection string. Default: $DURATASK_CONNECTION_STRING, else sqlite:///duratask.db.",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON document (for scripts) instead of tables.")]
InstanceId = Annotated[str, typer.Argument(help="The instance id.", show_default=False)]


def with_client(connection: str | None, action: Callable[[DurableTaskClient], Awaitable[T]]) -> T:
    """Run ``action`` with a connected client on a fresh event loop (one per command), then close it."""

    async def run() -> T:
        async with DurableTaskClient(connection) as client:
            return await action(client)

    return asyncio.run(run())
