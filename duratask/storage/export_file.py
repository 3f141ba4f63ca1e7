"""The export file of ``duratask export`` / ``duratask import``: whole instances in JSON Lines.

Line 1 is the header, ``{"format": "duratask-export", "version": 1, "taskhub": ..., "exported_at": ...}``;
then one line per instance, the JSON of an ``InstanceDump`` (record, history, inbox, activities);
the last line is the end marker ``{"end": "duratask-export", "instances": N}``, so that a file cut
short anywhere, even between two lines, is known to be incomplete.

Both directions stream: a page of instances at a time is held in memory, whatever the file's size.
An import goes batch by batch, each batch one transaction: a bad line fails its batch (nothing of it
is imported) after the batches before it were.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

import msgspec

from ..errors import DurableTaskError
from .base import ImportConflictError, InstanceDump, Storage

FORMAT = "duratask-export"
FORMAT_VERSION = 1

#: Instances per export page and per import batch (one transaction each).
PAGE_SIZE = 500
#: An import batch also ends once its lines reach this size, so huge histories stay bounded.
MAX_BATCH_BYTES = 16 * 1024 * 1024


class ExportHeader(msgspec.Struct, kw_only=True):
    format: str
    version: int
    taskhub: str
    exported_at: datetime


class ExportEnd(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    end: str
    instances: int


class ExportFileError(DurableTaskError, ValueError):
    """A file that is not a duratask export, or an incomplete or damaged one."""


@dataclass
class TransferCounts:
    """What an export or import moved so far."""

    instances: int = 0
    history_events: int = 0
    messages: int = 0
    activities: int = 0
    #: Instances per runtime status name.
    statuses: Counter[str] = field(default_factory=Counter)
    #: Bytes of the file read or written so far.
    bytes: int = 0

    def add(self, dumps: list[InstanceDump]) -> None:
        for dump in dumps:
            self.instances += 1
            self.history_events += len(dump.history)
            self.messages += len(dump.inbox)
            self.activities += len(dump.activities)
            self.statuses[dump.instance.status.name] += 1


Progress = Callable[[TransferCounts], None]

_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(ExportHeader)
_dump_decoder = msgspec.json.Decoder(InstanceDump)
_end_decoder = msgspec.json.Decoder(ExportEnd)


# --- export ------------------------------------------------------------------------------------


async def export_to(
    storage: Storage,
    out: IO[bytes],
    *,
    taskhub: str,
    page_size: int = PAGE_SIZE,
    on_progress: Progress | None = None,
) -> TransferCounts:
    """Write every instance of ``storage`` to ``out``, page by page (each page one read transaction).

    Instances that change while the export runs are written as they were when their page was read:
    stop the workers of the source for an exact copy of a running system.
    """
    counts = TransferCounts()
    header = ExportHeader(
        format=FORMAT, version=FORMAT_VERSION, taskhub=taskhub, exported_at=datetime.now(UTC)
    )
    counts.bytes += _write_line(out, _encoder.encode(header))
    after: str | None = None
    while True:
        page = await storage.export_instances(after, page_size)
        if page:
            lines = _encoder.encode_lines(page)
            out.write(lines)
            counts.bytes += len(lines)
            counts.add(page)
            if on_progress is not None:
                on_progress(counts)
        if len(page) < page_size:
            break
        after = page[-1].instance.instance_id
    counts.bytes += _write_line(out, _encoder.encode(ExportEnd(end=FORMAT, instances=counts.instances)))
    return counts


def _write_line(out: IO[bytes], data: bytes) -> int:
    out.write(data + b"\n")
    return len(data) + 1


# --- reading -----------------------------------------------------------------------------------


class ExportReader:
    """Reads an export file from ``stream``: the header at once, then instances batch by batch.

    ``name`` names the file in errors. Every line is checked; the end marker must come last and
    count the instances before it.
    """

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self.name = name
        self._stream = stream
        self._line_number = 0
        self.bytes_read = 0
        self.header = self._read_header()

    def _fail(self, message: str) -> ExportFileError:
        return ExportFileError(f"{self.name}: {message}")

    def _next_line(self) -> bytes:
        line = self._stream.readline()
        if line:
            self._line_number += 1
            self.bytes_read += len(line)
        return line

    def _read_header(self) -> ExportHeader:
        line = self._next_line()
        if not line:
            raise self._fail("the file is empty, not a duratask export")
        try:
            header = _header_decoder.decode(line)
        except msgspec.DecodeError:
            header = None
        if header is None or header.format != FORMAT:
            raise self._fail(
                f"not a duratask export (its first line is not a {FORMAT!r} header); "
                "make one with `duratask export`"
            )
        if header.version > FORMAT_VERSION:
            raise self._fail(
                f"written in export format version {header.version} by a newer duratask; "
                f"this one reads version {FORMAT_VERSION}: upgrade duratask to import it"
            )
        if header.version < 1:
            raise self._fail(f"unknown export format version {header.version}")
        return header

    def batches(
        self, size: int = PAGE_SIZE, max_bytes: int = MAX_BATCH_BYTES
    ) -> Iterator[list[InstanceDump]]:
        """Lists of at most ``size`` instances (fewer once they reach ``max_bytes``), the last one
        only once the end marker has been read and checked."""
        batch: list[InstanceDump] = []
        batch_bytes = 0
        count = 0
        while True:
            line = self._next_line()
            if not line:
                raise self._fail(
                    f"the file ends after line {self._line_number} without its end line: it is truncated"
                )
            dump = self._decode_instance(line)
            if dump is None:
                self._check_end(line, count)
                if batch:
                    yield batch
                return
            batch.append(dump)
            count += 1
            batch_bytes += len(line)
            if len(batch) >= size or batch_bytes >= max_bytes:
                yield batch
                batch, batch_bytes = [], 0

    def _decode_instance(self, line: bytes) -> InstanceDump | None:
        """The instance on ``line``; ``None`` for the end marker; an error for anything else."""
        try:
            dump: InstanceDump = _dump_decoder.decode(line)
            return dump
        except msgspec.DecodeError as exc:
            problem = exc
        try:
            _end_decoder.decode(line)
            return None
        except msgspec.DecodeError:
            pass
        where = f"line {self._line_number}"
        if not line.endswith(b"\n"):
            raise self._fail(f"{where}, the last, is cut short: the file is truncated ({problem})")
        raise self._fail(f"{where} is not an instance of a duratask export: {problem}")

    def _check_end(self, line: bytes, count: int) -> None:
        end = _end_decoder.decode(line)
        if end.end != FORMAT:
            raise self._fail(f"line {self._line_number} is not an instance of a duratask export")
        if end.instances != count:
            raise self._fail(
                f"the end line says {end.instances} instances but the file holds {count}: it was altered"
            )
        extra = self._next_line()
        if extra.strip():
            raise self._fail(f"line {self._line_number} follows the end line")


# --- import ------------------------------------------------------------------------------------


@dataclass
class ImportOutcome:
    header: ExportHeader
    counts: TransferCounts


async def import_from(
    storage: Storage,
    reader: ExportReader,
    *,
    replace: bool = False,
    batch_size: int = PAGE_SIZE,
    on_progress: Progress | None = None,
) -> ImportOutcome:
    """Import every instance ``reader`` reads into ``storage``, a transaction per batch.

    A damaged line or an id conflict fails with an error noting how many instances were imported
    before it (the batches before the failing one); nothing of the failing batch is.
    """
    counts = TransferCounts()
    try:
        for batch in reader.batches(batch_size):
            await storage.import_instances(batch, replace=replace)
            counts.add(batch)
            counts.bytes = reader.bytes_read
            if on_progress is not None:
                on_progress(counts)
    except (ValueError, ImportConflictError) as exc:  # a bad file, an id twice or an id taken
        exc.add_note(_imported_before(counts))
        raise
    return ImportOutcome(reader.header, counts)


def _imported_before(counts: TransferCounts) -> str:
    plural = "" if counts.instances == 1 else "s"
    return f"{counts.instances} instance{plural} imported before this error; nothing of the batch that failed"
