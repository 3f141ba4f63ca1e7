"""The ``duratask`` command line (SPEC §5).

``main()`` is the console-script entry point; ``app`` is the Typer app (for ``typer.testing.CliRunner``).
Commands live in ``instances`` (start, get, list, history, raise, terminate, suspend, resume, purge),
``processes`` (worker, serve, dashboard), ``schema`` (migrate) and ``transfer`` (export, import);
``errors`` says how failures are reported.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer
from typer.exceptions import TyperException

from . import instances, processes, schema, transfer  # noqa: F401  (importing them registers their commands)
from .app import app
from .errors import EXIT_ERROR, one_line

__all__ = ["app", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI and exit with its status; every error is one line on stderr."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=list(argv) if argv is not None else None, prog_name="duratask",
                              standalone_mode=False)
    except TyperException as exc:  # usage errors: one line instead of typer's boxed usage screen
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            hint = _help_hint(exc)
            print(f"Error: {one_line(exc.format_message())}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    sys.exit(result if isinstance(result, int) else 0)


def _help_hint(exc: TyperException) -> str:
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None)
    return f" (see '{path} --help')" if path else ""
