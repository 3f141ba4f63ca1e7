"""The export file: its lines, streaming both ways, and every way a file can be wrong."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.storage.base import ImportConflictError, Storage
from duratask.storage.export_file import (
    FORMAT,
    ExportFileError,
    ExportReader,
    export_to,
    import_from,
)
from duratask.storage.sqlite import SqliteStorage

from .builders import create, finished, running
from .test_transfer_contract import export_all


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[Storage]:
    storage = SqliteStorage(str(tmp_path / "source.db"), "src")
    await storage.open()
    for n in range(7):
        await finished(storage, f"done-{n}")
    await running(storage, "run")
    await create(storage, "new")
    yield storage
    await storage.close()


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[Storage]:
    storage = SqliteStorage(str(tmp_path / "target.db"), "dst")
    await storage.open()
    yield storage
    await storage.close()


async def exported(storage: Storage, page_size: int = 3) -> bytes:
    out = io.BytesIO()
    await export_to(storage, out, taskhub="src", page_size=page_size)
    return out.getvalue()


async def import_bytes(storage: Storage, data: bytes, batch_size: int = 4, replace: bool = False) -> int:
    outcome = await import_from(
        storage, ExportReader(io.BytesIO(data), "f.jsonl"), batch_size=batch_size, replace=replace
    )
    return outcome.counts.instances


async def test_the_file_is_a_header_one_line_per_instance_and_an_end_line(source: Storage) -> None:
    progress: list[int] = []
    out = io.BytesIO()
    counts = await export_to(
        source, out, taskhub="src", page_size=4, on_progress=lambda c: progress.append(c.instances)
    )
    lines = out.getvalue().splitlines()

    header = json.loads(lines[0])
    assert header["format"] == FORMAT and header["version"] == 1 and header["taskhub"] == "src"
    assert header["exported_at"].endswith("Z")
    assert [json.loads(line)["instance"]["instance_id"] for line in lines[1:-1]] == [
        *(f"done-{n}" for n in range(7)),
        "new",
        "run",
    ]
    assert json.loads(lines[-1]) == {"end": FORMAT, "instances": 9}
    assert progress == [4, 8, 9]  # a page at a time
    assert counts.instances == 9 and counts.bytes == len(out.getvalue())
    assert counts.statuses == {"COMPLETED": 7, "RUNNING": 1, "PENDING": 1}
    assert counts.activities == 7 and counts.messages == 1


async def test_an_exact_multiple_of_the_page_size_ends_cleanly(source: Storage) -> None:
    data = await exported(source, page_size=9)
    assert json.loads(data.splitlines()[-1]) == {"end": FORMAT, "instances": 9}


async def test_import_reads_what_export_wrote(source: Storage, target: Storage) -> None:
    assert await import_bytes(target, await exported(source)) == 9
    assert await export_all(target) == await export_all(source)


async def test_an_empty_hub_round_trips(target: Storage, tmp_path: Path) -> None:
    empty = SqliteStorage(str(tmp_path / "empty.db"))
    await empty.open()
    data = await exported(empty)
    await empty.close()

    assert len(data.splitlines()) == 2
    assert await import_bytes(target, data) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"hello world\n", "not a duratask export"),
        (
            b'{"format": "something-else", "version": 1, "taskhub": "x", "exported_at": "2024-01-01T00:00:00Z"}\n',
            "not a duratask export",
        ),
        (b"[1, 2, 3]\n", "not a duratask export"),
        (
            b'{"format": "duratask-export", "version": 2, "taskhub": "x", "exported_at": "2024-01-01T00:00:00Z"}\n',
            "format version 2 by a newer duratask",
        ),
    ],
)
async def test_a_file_that_is_not_an_export_is_refused_before_anything(content: bytes, message: str) -> None:
    with pytest.raises(ExportFileError, match=message):
        ExportReader(io.BytesIO(content), "f.jsonl")


async def test_a_truncated_last_line_names_the_line_and_imports_nothing_of_its_batch(
    source: Storage, target: Storage
) -> None:
    data = await exported(source)
    lines = data.splitlines(keepends=True)
    cut = b"".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2]  # the last instance, half written

    with pytest.raises(
        ExportFileError, match="line 10, the last, is cut short: the file is truncated"
    ) as caught:
        await import_bytes(target, cut, batch_size=4)

    assert caught.value.__notes__ == [
        "8 instances imported before this error; nothing of the batch that failed"
    ]
    assert len(await export_all(target)) == 8  # two whole batches of 4; the third failed whole


async def test_a_file_cut_between_lines_is_known_to_be_truncated(source: Storage, target: Storage) -> None:
    lines = (await exported(source)).splitlines(keepends=True)

    with pytest.raises(ExportFileError, match="ends after line 7 without its end line: it is truncated"):
        await import_bytes(target, b"".join(lines[:7]), batch_size=4)

    assert len(await export_all(target)) == 4


async def test_a_damaged_line_in_the_middle_is_named(source: Storage, target: Storage) -> None:
    lines = (await exported(source)).splitlines(keepends=True)
    lines[3] = b'{"instance": {"instance_id": 42}}\n'

    with pytest.raises(
        ExportFileError, match=r"line 4 is not an instance of a duratask export: .*instance_id"
    ):
        await import_bytes(target, b"".join(lines), batch_size=2)

    assert len(await export_all(target)) == 2


async def test_an_end_line_that_does_not_add_up_is_refused(source: Storage, target: Storage) -> None:
    lines = (await exported(source)).splitlines(keepends=True)
    dropped = lines[:3] + lines[4:]  # one instance line removed

    with pytest.raises(ExportFileError, match="says 9 instances but the file holds 8"):
        await import_bytes(target, b"".join(dropped), batch_size=100)

    assert await export_all(target) == []


async def test_nothing_may_follow_the_end_line(source: Storage, target: Storage) -> None:
    data = await exported(source) + b'{"more": 1}\n'

    with pytest.raises(ExportFileError, match="line 12 follows the end line"):
        await import_bytes(target, data, batch_size=100)


async def test_an_end_line_without_its_final_newline_is_fine(source: Storage, target: Storage) -> None:
    assert await import_bytes(target, (await exported(source)).rstrip(b"\n")) == 9


async def test_batches_also_end_at_the_byte_limit(source: Storage) -> None:
    reader = ExportReader(io.BytesIO(await exported(source)), "f")
    sizes = [len(batch) for batch in reader.batches(size=100, max_bytes=1)]
    assert sizes == [1] * 9


async def test_a_conflict_stops_at_its_batch(source: Storage, target: Storage) -> None:
    data = await exported(source)
    await finished(target, "done-5")

    with pytest.raises(ImportConflictError, match="'done-5'") as caught:
        await import_bytes(target, data, batch_size=4)

    assert caught.value.__notes__ == [
        "4 instances imported before this error; nothing of the batch that failed"
    ]
    assert [d.instance.instance_id for d in await export_all(target)] == [
        "done-0",
        "done-1",
        "done-2",
        "done-3",
        "done-5",
    ]
    assert await import_bytes(target, data, replace=True) == 9
    assert await export_all(target) == await export_all(source)


async def test_imported_statuses_are_counted(source: Storage, target: Storage) -> None:
    outcome = await import_from(target, ExportReader(io.BytesIO(await exported(source)), "f"))
    assert outcome.header.taskhub == "src"
    assert outcome.counts.statuses == {
        Status.COMPLETED.name: 7,
        Status.RUNNING.name: 1,
        Status.PENDING.name: 1,
    }
