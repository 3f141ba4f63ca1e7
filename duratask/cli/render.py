"""What the CLI prints: JSON documents for scripts, rich tables for people.

Every value that comes from users (ids, names, payloads, reasons) goes into ``rich.text.Text``,
never into markup, so a payload such as ``"[bold]"`` prints as written.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .. import history as h
from ..models import OrchestrationMetadata, OrchestrationRuntimeStatus, TaskFailureDetails

#: Width for tables written to a pipe or file, where no terminal says how wide to be.
_PIPE_WIDTH = 200
_PAYLOAD_PREVIEW = 80
#: Console width from which ``list`` shows the last-updated column too.
_WIDE = 100

_STATUS_STYLES: dict[OrchestrationRuntimeStatus, str] = {
    OrchestrationRuntimeStatus.RUNNING: "bold blue",
    OrchestrationRuntimeStatus.COMPLETED: "bold green",
    OrchestrationRuntimeStatus.CONTINUED_AS_NEW: "cyan",
    OrchestrationRuntimeStatus.FAILED: "bold red",
    OrchestrationRuntimeStatus.CANCELED: "dim",
    OrchestrationRuntimeStatus.TERMINATED: "red",
    OrchestrationRuntimeStatus.PENDING: "yellow",
    OrchestrationRuntimeStatus.SUSPENDED: "magenta",
}


# --- consoles and JSON ----------------------------------------------------------------------------


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(file=stream, highlight=False, width=_PIPE_WIDTH if piped else None)


def out() -> Console:
    """Console for results (stdout), made per command so test runners' stream swaps apply."""
    return _console(stderr=False)


def err() -> Console:
    """Console for progress displays and notes (stderr), so stdout stays the result alone."""
    return _console(stderr=True)


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout."""
    print(json.dumps(document, indent=2, ensure_ascii=False))


# --- documents (the --json forms) -----------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def payload(text: str | None) -> Any:
    """A stored JSON payload as a value; text that is not JSON (foreign SDKs) is kept as a string."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def instance_document(meta: OrchestrationMetadata) -> dict[str, Any]:
    return {
        "instance_id": meta.instance_id,
        "name": meta.name,
        "runtime_status": meta.runtime_status.name,
        "created_at": iso(meta.created_at),
        "last_updated_at": iso(meta.last_updated_at),
        "input": payload(meta.serialized_input),
        "output": payload(meta.serialized_output),
        "custom_status": payload(meta.serialized_custom_status),
        "failure_details": msgspec.to_builtins(meta.failure_details) if meta.failure_details else None,
        "parent_instance_id": meta.parent_instance_id,
    }


def event_document(sequence: int, event: h.HistoryEvent) -> dict[str, Any]:
    document: dict[str, Any] = {"seq": sequence}
    document.update(msgspec.to_builtins(event))
    if isinstance(event, h.ExecutionCompleted):  # to_builtins gives the enum's number; people read names
        document["status"] = event.status.name
    return document


# --- tables and panels (the human forms) ----------------------------------------------------------


def when(value: datetime | None, timespec: str = "seconds") -> str:
    """A time in UTC without the offset (the column headers say UTC)."""
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(sep=" ", timespec=timespec)


def status_text(status: OrchestrationRuntimeStatus) -> Text:
    return Text(status.name, style=_STATUS_STYLES.get(status, ""))


def _pretty_payload(text: str | None) -> Text:
    if text is None:
        return Text("-", style="dim")
    try:
        value = json.loads(text)
    except ValueError:
        return Text(text)
    return Text(json.dumps(value, indent=2, ensure_ascii=False))


def failure_text(failure: TaskFailureDetails, with_stack: bool = True) -> Text:
    text = Text()
    depth = 0
    current: TaskFailureDetails | None = failure
    while current is not None:
        prefix = "caused by " if depth else ""
        text.append(f"{prefix}{current.error_type}: ", style="bold red")
        text.append(current.error_message + "\n")
        if with_stack and current.stack_trace:
            text.append(current.stack_trace.rstrip() + "\n", style="dim")
        current, depth = current.inner_failure, depth + 1
    text.rstrip()
    return text


def instance_panel(meta: OrchestrationMetadata) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, RenderableType]] = [
        ("Instance ID", Text(meta.instance_id)),
        ("Name", Text(meta.name)),
        ("Status", status_text(meta.runtime_status)),
        ("Created (UTC)", Text(when(meta.created_at))),
        ("Last updated (UTC)", Text(when(meta.last_updated_at))),
    ]
    if meta.parent_instance_id:
        rows.append(("Parent", Text(meta.parent_instance_id)))
    rows += [
        ("Input", _pretty_payload(meta.serialized_input)),
        ("Output", _pretty_payload(meta.serialized_output)),
        ("Custom status", _pretty_payload(meta.serialized_custom_status)),
    ]
    if meta.failure_details is not None:
        rows.append(("Failure", failure_text(meta.failure_details)))
    for label, value in rows:
        grid.add_row(label, value)
    return grid


def instances_table(
    instances: list[OrchestrationMetadata], caption: str | None = None, *, width: int = _PIPE_WIDTH
) -> Table:
    """Instances, one per row; on a console narrower than ``_WIDE`` the last-updated column is left out
    so that 32-character ids stay on one line (people copy them from here)."""
    wide = width >= _WIDE
    table = Table(caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("Instance ID", overflow="fold")
    table.add_column("Name", overflow="fold")
    table.add_column("Status", no_wrap=True)
    table.add_column("Created (UTC)", no_wrap=True)
    if wide:
        table.add_column("Last updated (UTC)", no_wrap=True)
    for meta in instances:
        cells: list[RenderableType] = [
            Text(meta.instance_id), Text(meta.name), status_text(meta.runtime_status), when(meta.created_at)
        ]
        table.add_row(*cells, *([when(meta.last_updated_at)] if wide else []))
    return table


def history_table(instance_id: str, events: list[h.HistoryEvent]) -> RenderableType:
    table = Table(
        title=Text(f"History of {instance_id}"), title_justify="left",
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("Type", no_wrap=True)
    table.add_column("Time (UTC)", no_wrap=True)
    table.add_column("Event ID", justify="right", no_wrap=True)
    table.add_column("Details", overflow="fold")
    for sequence, (event, time) in enumerate(zip(events, _event_times(events))):
        table.add_row(
            str(sequence),
            type(event).__name__,
            time,
            "" if event.event_id < 0 else str(event.event_id),
            event_details(event),
        )
    return Group(table, Text(f"{len(events)} events", style="dim"))


def _event_times(events: list[h.HistoryEvent]) -> list[str]:
    """Event times, with the date only where it changes: narrower, and the eye catches the day."""
    times: list[str] = []
    previous_day = ""
    for event in events:
        day, _, clock = when(event.timestamp, "milliseconds").partition(" ")
        times.append(clock if day == previous_day else f"{day} {clock}")
        previous_day = day
    return times


# --- one line of details per history event ----------------------------------------------------------

# Shown in their own columns, or noise in a summary.
_HIDDEN_FIELDS = frozenset({"timestamp", "event_id", "execution_id"})
# Fields whose protocol name hides what they hold for this event type.
_FIELD_LABELS: dict[tuple[type, str], str] = {
    (h.ExecutionTerminated, "input"): "output",
    (h.ExecutionSuspended, "input"): "reason",
    (h.ExecutionResumed, "input"): "reason",
    (h.EventRaised, "input"): "data",
    (h.EventSent, "input"): "data",
    (h.TaskCompleted, "task_scheduled_id"): "task",
    (h.TaskFailed, "task_scheduled_id"): "task",
    (h.SubOrchestrationInstanceCompleted, "task_scheduled_id"): "task",
    (h.SubOrchestrationInstanceFailed, "task_scheduled_id"): "task",
    (h.ExecutionStarted, "instance_id"): "",  # the table is about this instance already
}


def _shorten(text: str, limit: int = _PAYLOAD_PREVIEW) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _format_value(value: Any) -> str:
    if isinstance(value, TaskFailureDetails):
        return _shorten(f"{value.error_type}: {value.error_message}")
    if isinstance(value, h.ParentInstance):
        return f"{value.instance_id} (task {value.task_scheduled_id})"
    if isinstance(value, datetime):
        return when(value, "milliseconds")
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, str):
        return _shorten(value)
    if isinstance(value, (dict, list)):
        return _shorten(json.dumps(msgspec.to_builtins(value), ensure_ascii=False))
    return str(value)


def event_details(event: h.HistoryEvent) -> Text:
    """The event's meaningful fields as ``key=value`` pairs (defaults and empty values left out)."""
    parts: list[str] = []
    for field in msgspec.structs.fields(type(event)):
        value = getattr(event, field.name)
        label = _FIELD_LABELS.get((type(event), field.name), field.name)
        if field.name in _HIDDEN_FIELDS or not label or value is None or value == [] or value == {}:
            continue
        if isinstance(value, bool) and value == field.default:
            continue
        parts.append(f"{label}={_format_value(value)}")
    return Text("  ".join(parts))
