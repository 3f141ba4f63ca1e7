"""Commands on instances: start, get, list, history, raise, terminate, suspend, resume, purge."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..client import DurableTaskClient
from ..errors import OrchestrationNotFoundError
from ..history import HistoryEvent
from ..models import (
    OrchestrationMetadata,
    OrchestrationQuery,
    OrchestrationQueryResult,
    OrchestrationRuntimeStatus,
    PurgeInstancesFilter,
)
from . import inputs, render
from .app import AsJson, Connection, InstanceId, app, with_client
from .errors import EXIT_ERROR, CliError, usage_error

Timeout = Annotated[
    float | None,
    typer.Option("--timeout", min=0, help="With --wait: give up after this many seconds (exit code 4)."),
]
Statuses = Annotated[
    list[str] | None,
    typer.Option("--status", "-s", help="Runtime status (repeat, or comma-separate): running, completed, ...",
                 show_default=False),
]
CreatedFrom = Annotated[
    str | None, typer.Option("--created-from", help="Created at or after this ISO 8601 time (UTC if no zone).")
]
CreatedTo = Annotated[
    str | None, typer.Option("--created-to", help="Created at or before this ISO 8601 time (UTC if no zone).")
]
Recursive = Annotated[
    bool, typer.Option("--recursive/--no-recursive", help="Include sub-orchestrations.")
]


@contextmanager
def _spinner(message: str) -> Iterator[None]:
    """A progress display on stderr while a long call runs (silent when stderr is not a terminal)."""
    with render.err().status(message):
        yield


def _print_instance(meta: OrchestrationMetadata, as_json: bool) -> None:
    if as_json:
        render.emit_json(render.instance_document(meta))
    else:
        render.out().print(render.instance_panel(meta))


# --- start ----------------------------------------------------------------------------------------


@app.command(rich_help_panel="Instances")
def start(
    name: Annotated[str, typer.Argument(help="Orchestrator name, as registered on the worker.")],
    input_json: Annotated[
        str | None, typer.Option("--input", "-i", help="Input as JSON text (@FILE reads a file, - reads stdin).")
    ] = None,
    instance_id: Annotated[str | None, typer.Option("--id", help="Instance id (default: a new random id).")] = None,
    start_at: Annotated[
        str | None, typer.Option("--start-at", help="Start no earlier than this ISO 8601 time (UTC if no zone).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the instance to finish and print its result.")] = False,
    timeout: Timeout = None,
    connection: Connection = None,
    as_json: AsJson = False,
) -> None:
    """Start a new orchestration instance and print its id."""
    value = inputs.json_value(input_json, "--input")
    when = inputs.timestamp(start_at, "--start-at")

    async def run(client: DurableTaskClient) -> tuple[str, OrchestrationMetadata | None]:
        started = await client.schedule_new_orchestration_instance(name, value, instance_id=instance_id, start_at=when)
        if not wait:
            return started, None
        with _spinner(f"Waiting for {started} to finish…"):
            return started, await client.wait_for_instance_completion(started, True, timeout=timeout)

    started, finished = with_client(connection, run)
    if not wait:
        if as_json:
            render.emit_json({"instance_id": started})
        else:
            print(started)
        return
    if finished is None:  # purged by someone else while we waited
        raise OrchestrationNotFoundError(started)
    _print_instance(finished, as_json)
    _fail_unless_completed(finished)


def _fail_unless_completed(meta: OrchestrationMetadata) -> None:
    if meta.runtime_status is OrchestrationRuntimeStatus.COMPLETED:
        return
    reason = f": {meta.failure_details.error_message}" if meta.failure_details else ""
    raise CliError(f"instance {meta.instance_id!r} ended {meta.runtime_status.name}{reason}", EXIT_ERROR)


# --- get, list, history ---------------------------------------------------------------------------


@app.command(rich_help_panel="Instances")
def get(instance_id: InstanceId, connection: Connection = None, as_json: AsJson = False) -> None:
    """Show one instance: status, times, input, output, custom status, failure."""

    async def run(client: DurableTaskClient) -> OrchestrationMetadata | None:
        return await client.get_instance(instance_id, get_inputs_and_outputs=True)

    meta = with_client(connection, run)
    if meta is None:
        raise OrchestrationNotFoundError(instance_id)
    _print_instance(meta, as_json)


@app.command("list", rich_help_panel="Instances")
def list_instances(
    status: Statuses = None,
    prefix: Annotated[str | None, typer.Option("--prefix", help="Instance ids starting with this.")] = None,
    created_from: CreatedFrom = None,
    created_to: CreatedTo = None,
    page_size: Annotated[int, typer.Option("--page-size", min=1, help="Instances per page.")] = 100,
    continuation_token: Annotated[
        str | None, typer.Option("--continuation-token", help="Fetch the page after the one that printed it.")
    ] = None,
    follow_all: Annotated[bool, typer.Option("--all", help="Fetch every page, not just the first.")] = False,
    connection: Connection = None,
    as_json: AsJson = False,
) -> None:
    """List instances, oldest first, filtered by status, id prefix and creation time."""
    query = OrchestrationQuery(
        runtime_status=inputs.statuses(status),
        created_from=inputs.timestamp(created_from, "--created-from"),
        created_to=inputs.timestamp(created_to, "--created-to"),
        instance_id_prefix=prefix,
        page_size=page_size,
        continuation_token=continuation_token,
    )

    async def run(client: DurableTaskClient) -> OrchestrationQueryResult:
        if not follow_all:
            return await client.get_all_instances(query)
        return await _all_pages(client, query)

    result = with_client(connection, run)
    if as_json:
        render.emit_json(
            {
                "instances": [render.instance_document(m) for m in result.instances],
                "continuation_token": result.continuation_token,
            }
        )
        return
    count = f"{len(result.instances)} instance{'' if len(result.instances) == 1 else 's'}"
    caption = count if result.continuation_token is None else (
        f"{count}; more with --all or --continuation-token {result.continuation_token}"
    )
    console = render.out()
    console.print(render.instances_table(result.instances, caption=caption, width=console.width))


async def _all_pages(client: DurableTaskClient, query: OrchestrationQuery) -> OrchestrationQueryResult:
    found: list[OrchestrationMetadata] = []
    columns = (SpinnerColumn(), TextColumn("Listing instances: {task.completed} so far"), TimeElapsedColumn())
    with Progress(*columns, console=render.err(), transient=True) as progress:
        task = progress.add_task("list", total=None)
        while True:
            page = await client.get_all_instances(query)
            found += page.instances
            progress.advance(task, len(page.instances))
            if page.continuation_token is None:
                return OrchestrationQueryResult(instances=found, continuation_token=None)
            query = dataclasses.replace(query, continuation_token=page.continuation_token)


@app.command(rich_help_panel="Instances")
def history(instance_id: InstanceId, connection: Connection = None, as_json: AsJson = False) -> None:
    """Show an instance's history events, oldest first."""

    async def run(client: DurableTaskClient) -> list[HistoryEvent]:
        return await client.get_orchestration_history(instance_id)

    events = with_client(connection, run)
    if as_json:
        render.emit_json(
            {"instance_id": instance_id, "events": [render.event_document(i, e) for i, e in enumerate(events)]}
        )
    else:
        render.out().print(render.history_table(instance_id, events))


# --- raise, terminate, suspend, resume ----------------------------------------------------------------


def _done(as_json: bool, message: str, **document: object) -> None:
    if as_json:
        render.emit_json(document)
    else:
        print(message)


@app.command("raise", rich_help_panel="Instances")
def raise_event(
    instance_id: InstanceId,
    event_name: Annotated[str, typer.Argument(help="Event name the orchestrator waits for.", show_default=False)],
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="Event data as JSON text (@FILE reads a file, - stdin).")
    ] = None,
    connection: Connection = None,
    as_json: AsJson = False,
) -> None:
    """Send an external event to an instance."""
    value = inputs.json_value(data, "--data")

    async def run(client: DurableTaskClient) -> None:
        await client.raise_event(instance_id, event_name, value)

    with_client(connection, run)
    _done(as_json, f"Raised event {event_name!r} on {instance_id}.", instance_id=instance_id, event_name=event_name)


@app.command(rich_help_panel="Instances")
def terminate(
    instance_id: InstanceId,
    output: Annotated[str | None, typer.Option("--output", help="Output to record, as JSON text.")] = None,
    recursive: Recursive = True,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the instance has stopped.")] = False,
    timeout: Timeout = None,
    connection: Connection = None,
    as_json: AsJson = False,
) -> None:
    """Terminate an instance (a finished one is left as it is)."""
    value = inputs.json_value(output, "--output")

    async def run(client: DurableTaskClient) -> OrchestrationMetadata | None:
        await client.terminate_instance(instance_id, value, recursive=recursive)
        if not wait:
            return None
        with _spinner(f"Waiting for {instance_id} to stop…"):
            return await client.wait_for_instance_completion(instance_id, timeout=timeout)

    stopped = with_client(connection, run)
    status = stopped.runtime_status.name if stopped else None
    message = f"Terminated {instance_id}." if stopped else f"Termination of {instance_id} requested."
    _done(as_json, message, instance_id=instance_id, runtime_status=status)


@app.command(rich_help_panel="Instances")
def suspend(
    instance_id: InstanceId,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the history).")] = None,
    connection: Connection = None,
    as_json: AsJson = False,
) -> None:
    """Suspend an instance: its events and timers wait until it is resumed."""

    async def run(client: DurableTaskClient) -> None:
        await client.suspend_instance(instance_id, reason)

    with_client(connection, run)
    _done(as_json, f"Suspension of {instance_id} requested.", instance_id=instance_id)


@app.command(rich_help_panel="Instances")
def resume(
    instance_id: InstanceId,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the history).")] = None,
    connection: Connection = None,
    as_json: AsJson = False,
) -> None:
    """Resume a suspended instance."""

    async def run(client: DurableTaskClient) -> None:
        await client.resume_instance(instance_id, reason)

    with_client(connection, run)
    _done(as_json, f"Resumption of {instance_id} requested.", instance_id=instance_id)


# --- purge ------------------------------------------------------------------------------------------


@app.command(rich_help_panel="Instances")
def purge(
    instance_id: Annotated[
        str | None, typer.Argument(help="Instance to purge; or omit it and give filters.", show_default=False)
    ] = None,
    recursive: Recursive = True,
    status: Statuses = None,
    created_from: CreatedFrom = None,
    created_to: CreatedTo = None,
    connection: Connection = None,
    as_json: AsJson = False,
) -> None:
    """Delete finished instances and their history: one by id, or every one matching filters."""
    filters = PurgeInstancesFilter(
        created_from=inputs.timestamp(created_from, "--created-from"),
        created_to=inputs.timestamp(created_to, "--created-to"),
        runtime_status=inputs.statuses(status),
    )
    has_filters = filters != PurgeInstancesFilter()
    if instance_id is not None and has_filters:
        raise usage_error("give an instance id or filters (--status, --created-from, --created-to), not both")
    if instance_id is None and not has_filters:
        raise usage_error("give an instance id, or filters (--status, --created-from, --created-to) to purge many")

    async def run(client: DurableTaskClient) -> int:
        if instance_id is not None:
            return (await client.purge_instance(instance_id, recursive=recursive)).purged_instance_count
        with _spinner("Purging instances…"):
            return (await client.purge_all_instances(filters)).purged_instance_count

    count = with_client(connection, run)
    _done(as_json, f"Purged {count} instance{'' if count == 1 else 's'}.", purged_instance_count=count)
