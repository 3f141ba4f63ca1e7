"""``duratask export`` and ``duratask import``: move instances, with their whole history, between databases.

The file format is ``duratask.storage.export_file``'s. ``-`` stands for stdout / stdin; then the
summary goes to stderr, so stdout stays the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ..storage.base import ImportConflictError
from ..storage.connect import database_target, open_database_storage
from ..storage.export_file import PAGE_SIZE, ExportReader, TransferCounts, export_to, import_from
from . import render
from .app import AsJson, Connection, app
from .errors import EXIT_ERROR, CliError, one_line, usage_error

BatchSize = Annotated[
    int, typer.Option("--batch-size", min=1, help="Instances per transaction (and per page read or written).")
]


# --- export ---------------------------------------------------------------------------------------


@app.command("export", rich_help_panel="Database")
def export_instances(
    file: Annotated[
        str, typer.Argument(help="File to write (JSON Lines); - writes to stdout.", show_default=False)
    ],
    batch_size: BatchSize = PAGE_SIZE,
    connection: Connection = None,
    as_json: AsJson = False,
) -> None:
    """Write every instance of a task hub, with its history, inbox and queued activities, to FILE.

    Running instances are included: `duratask import` into another database carries them on.
    Work leased at the time is written as waiting, to run again after the import. For an exact
    copy of a busy system, stop its workers first: each page of instances is read consistently,
    but the pages are read one after another.
    """
    target = database_target(connection, "duratask export")
    started = time.monotonic()

    async def run() -> TransferCounts:
        storage = await open_database_storage(target)
        try:
            with _output(file) as out, _progress("Exporting", None) as progress:
                return await export_to(
                    storage, out, taskhub=target.taskhub, page_size=batch_size, on_progress=progress
                )
        finally:
            await storage.close()

    counts = asyncio.run(run())
    where = "stdout" if file == "-" else file
    document = {"file": where, "taskhub": target.taskhub, **_counts_document(counts), **_seconds(started)}
    _report(
        document,
        f"Exported {_instances(counts)} of task hub {target.taskhub!r} to {where}",
        as_json,
        file == "-",
    )


@contextlib.contextmanager
def _output(file: str) -> Iterator[IO[bytes]]:
    """stdout for ``-``; else a file that appears under its name only once complete."""
    if file == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    final = Path(file)
    partial = final.with_name(final.name + ".partial")
    try:
        out = partial.open("wb")
    except OSError as exc:
        raise usage_error(f"cannot write {file!r}: {exc.strerror or exc}") from None
    try:
        with out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        partial.replace(final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


# --- import ---------------------------------------------------------------------------------------


@app.command("import", rich_help_panel="Database")
def import_instances(
    file: Annotated[
        str, typer.Argument(help="File written by `duratask export`; - reads stdin.", show_default=False)
    ],
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite instances whose ids exist already (else: an error).")
    ] = False,
    batch_size: BatchSize = PAGE_SIZE,
    connection: Connection = None,
    as_json: AsJson = False,
) -> None:
    """Create the instances of an export FILE in a task hub, as they were: running ones carry on.

    Each batch of instances is one transaction. A damaged file or an id that exists already stops
    the import at the batch it is in; the batches before it stay imported.
    """
    target = database_target(connection, "duratask import")
    started = time.monotonic()
    with _input(file) as (stream, size):
        reader = ExportReader(stream, "stdin" if file == "-" else file)  # a bad file fails before connecting

        async def run() -> TransferCounts:
            storage = await open_database_storage(target)
            try:
                with _progress("Importing", size) as progress:
                    outcome = await import_from(
                        storage, reader, replace=replace, batch_size=batch_size, on_progress=progress
                    )
                return outcome.counts
            except (ValueError, ImportConflictError) as exc:
                raise _interrupted(exc) from None
            finally:
                await storage.close()

        counts = asyncio.run(run())
    header = reader.header
    document = {
        "file": reader.name,
        "taskhub": target.taskhub,
        "exported_from": header.taskhub,
        "exported_at": render.iso(header.exported_at),
        **_counts_document(counts),
        **_seconds(started),
    }
    _report(
        document,
        f"Imported {_instances(counts)} into task hub {target.taskhub!r} from {reader.name}",
        as_json,
        file == "-",
    )


@contextlib.contextmanager
def _input(file: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """The stream to read, and its size when known (for the progress bar)."""
    if file == "-":
        yield sys.stdin.buffer, None
        return
    try:
        stream = open(file, "rb")  # noqa: SIM115  (closed by the with below)
    except OSError as exc:
        raise usage_error(f"cannot read {file!r}: {exc.strerror or exc}") from None
    with stream:
        yield stream, os.fstat(stream.fileno()).st_size


def _interrupted(exc: BaseException) -> CliError:
    notes = "; ".join(getattr(exc, "__notes__", ()))
    hint = " (--replace overwrites them)" if isinstance(exc, ImportConflictError) else ""
    return CliError(one_line(f"{exc}{hint}" + (f"; {notes}" if notes else "")), EXIT_ERROR)


# --- shared -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(verb: str, total_bytes: int | None) -> Iterator[Any]:
    """A progress display on stderr; yields the callback that advances it (``TransferCounts`` -> None).

    Nothing at all when stderr is no terminal: a log file gets no empty lines from it.
    """
    console = render.err()
    if not console.is_terminal:
        yield lambda counts: None
        return
    columns: list[ProgressColumn | str] = [
        SpinnerColumn(),
        TextColumn(f"{verb}: {{task.fields[instances]:,}} instances"),
    ]
    if total_bytes is not None:
        columns += [BarColumn(), DownloadColumn()]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(verb, total=total_bytes, instances=0)

        def advance(counts: TransferCounts) -> None:
            progress.update(task, completed=counts.bytes, instances=counts.instances)

        yield advance


def _counts_document(counts: TransferCounts) -> dict[str, Any]:
    return {
        "instances": counts.instances,
        "statuses": dict(sorted(counts.statuses.items())),
        "history_events": counts.history_events,
        "messages": counts.messages,
        "activities": counts.activities,
        "bytes": counts.bytes,
    }


def _seconds(started: float) -> dict[str, float]:
    return {"seconds": round(time.monotonic() - started, 3)}


def _instances(counts: TransferCounts) -> str:
    statuses = ", ".join(f"{count:,} {name}" for name, count in sorted(counts.statuses.items()))
    plural = "" if counts.instances == 1 else "s"
    return f"{counts.instances:,} instance{plural}" + (f" ({statuses})" if statuses else "")


def _report(document: dict[str, Any], headline: str, as_json: bool, to_stderr: bool) -> None:
    """The summary: on stdout, or on stderr when stdout carries the data."""
    if as_json:
        text = _json_text(document)
    else:
        text = (
            f"{headline} in {document['seconds']:.1f} s: {document['history_events']:,} history events, "
            f"{document['messages']:,} waiting messages, {document['activities']:,} queued activities."
        )
    print(text, file=sys.stderr if to_stderr else sys.stdout)


def _json_text(document: dict[str, Any]) -> str:
    import json

    return json.dumps(document, indent=2, ensure_ascii=False)
