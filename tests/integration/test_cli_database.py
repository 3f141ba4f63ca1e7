"""``duratask migrate``, ``export`` and ``import``, run as users run them: one process per command.

Data is made in-process (a client and a worker on a SQLite file); every CLI call is a subprocess
whose stdout, stderr and exit code are checked, including bad files and bad connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from duratask import DurableTaskClient, OrchestrationContext, Worker
from duratask.storage.postgres.migrations import load_migrations as load_postgres_migrations

from .test_cli import COMMAND, assert_one_line_error


def run(cwd: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DURATASK_CONNECTION_STRING", "COLUMNS")}
    if stdin is None:
        return subprocess.run(
            [*COMMAND, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
        )
    done = subprocess.run(
        [*COMMAND, *args], cwd=cwd, env=env, capture_output=True, input=stdin, timeout=60, check=False
    )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def ok(cwd: Path, *args: str, stdin: bytes | None = None) -> str:
    result = run(cwd, *args, stdin=stdin)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def ok_json(cwd: Path, *args: str) -> Any:
    return json.loads(ok(cwd, *args, "--json"))


async def _greet(ctx: OrchestrationContext, name: str) -> str:
    return f"Hello {name}!"


async def _wait(ctx: OrchestrationContext, _: Any) -> str:
    value: str = await ctx.wait_for_external_event("go")
    return value


async def make_instances(connection: str, done: int = 5, waiting: int = 2) -> None:
    worker = Worker(connection, shutdown_timeout=1)
    worker.add_orchestrator(_greet, name="greet")
    worker.add_orchestrator(_wait, name="wait")
    async with worker, DurableTaskClient(connection) as client:
        for n in range(done):
            await client.schedule_new_orchestration_instance("greet", f"n{n}", instance_id=f"done-{n}")
        for n in range(waiting):
            await client.schedule_new_orchestration_instance("wait", instance_id=f"wait-{n}")
        for n in range(done):
            await client.wait_for_instance_completion(f"done-{n}", timeout=15)
        for n in range(waiting):
            await client.wait_for_instance_start(f"wait-{n}", timeout=15)


def listed(cwd: Path, connection: str) -> list[dict[str, Any]]:
    document = ok_json(cwd, "list", "--all", "-c", connection)
    return sorted(document["instances"], key=lambda i: i["instance_id"])


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'a.db'}"


@pytest.fixture
def pg_hub(pg_url: str) -> str:
    return f"{pg_url}?taskhub=cli_{uuid.uuid4().hex[:10]}"


# --- migrate ----------------------------------------------------------------------------------------


def test_migrate_sqlite_then_migrate_false_opens_it(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'm.db'}"

    refused = run(tmp_path, "list", "-c", f"{db}?migrate=false")
    assert_one_line_error(refused, 1, "schema version 0", "needs version 1", "Run `duratask migrate`")

    assert ok_json(tmp_path, "migrate", "-c", db) == {
        "database": f"SQLite database {str(tmp_path / 'm.db')!r}",
        "before": 0,
        "after": 1,
        "latest": 1,
    }
    assert "0 instances" in ok(tmp_path, "list", "-c", f"{db}?migrate=false")
    assert ok(tmp_path, "migrate", "-c", db).strip().endswith("schema version 1, up to date.")


def test_migrate_a_fresh_postgres_database_then_migrate_false_works(
    tmp_path: Path, pg_fresh_url: str
) -> None:
    refused = run(tmp_path, "list", "-c", f"{pg_fresh_url}?migrate=false")
    assert_one_line_error(refused, 1, "schema version 0", "Run `duratask migrate`")

    line = ok(tmp_path, "migrate", "-c", f"{pg_fresh_url}?taskhub=any&migrate=false").strip()
    latest = len(load_postgres_migrations())
    assert line.startswith("PostgreSQL database ") and line.endswith(f"schema version 0 -> {latest}, migrated.")
    assert "0 instances" in ok(tmp_path, "list", "-c", f"{pg_fresh_url}?migrate=false")
    assert ok_json(tmp_path, "migrate", "-c", pg_fresh_url)["before"] == latest


def _record_future_version(connection: str, path: Path) -> None:
    if connection.startswith("sqlite"):
        with sqlite3.connect(path) as conn:
            conn.execute("INSERT INTO duratask_schema (version, name, applied_at) VALUES (99, 'future', 0)")
    else:
        with psycopg.connect(connection, autocommit=True) as conn:
            conn.execute("INSERT INTO duratask_schema (version, name) VALUES (99, 'future')")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_database_newer_than_the_code_is_refused_and_left_alone(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / "newer.db"
    connection = f"sqlite:///{path}" if kind == "sqlite" else request.getfixturevalue("pg_fresh_url")
    ok(tmp_path, "migrate", "-c", connection)
    _record_future_version(connection, path)

    for args, option in (
        (["migrate"], ""),
        (["list"], ""),
        (["list"], "?migrate=false"),
        (["export", "out.jsonl"], ""),
    ):
        refused = run(tmp_path, *args, "-c", connection + option)
        assert_one_line_error(refused, 1, "schema version 99", "upgrade duratask")
    assert not (tmp_path / "out.jsonl").exists()

    if kind == "sqlite":
        with sqlite3.connect(path) as conn:
            versions = [
                row[0] for row in conn.execute("SELECT version FROM duratask_schema ORDER BY version")
            ]
    else:
        with psycopg.connect(connection) as conn:
            versions = [
                row[0] for row in conn.execute("SELECT version FROM duratask_schema ORDER BY version")
            ]
    latest = 1 if kind == "sqlite" else len(load_postgres_migrations())
    assert versions == [*range(1, latest + 1), 99]


@pytest.mark.parametrize("command", ["migrate", "export", "import"])
def test_memory_and_endpoints_are_refused(tmp_path: Path, command: str) -> None:
    file = [] if command == "migrate" else ["x.jsonl"]
    (tmp_path / "x.jsonl").write_text("")
    refused = run(tmp_path, command, *file, "-c", "memory://")
    assert_one_line_error(refused, 2, "memory:// exists only inside the process")
    refused = run(tmp_path, command, *file, "-c", "Endpoint=http://127.0.0.1:9;TaskHub=x;Authentication=None")
    assert_one_line_error(refused, 2, "not on a scheduler server", "--storage")


# --- export and import ------------------------------------------------------------------------------


def test_export_import_sqlite_to_postgres_to_stdout_to_sqlite(
    tmp_path: Path, sqlite_db: str, pg_hub: str
) -> None:
    asyncio.run(make_instances(sqlite_db))
    before = listed(tmp_path, sqlite_db)
    history = ok_json(tmp_path, "history", "done-3", "-c", sqlite_db)

    summary = ok_json(tmp_path, "export", "one.jsonl", "-c", sqlite_db, "--batch-size", "3")
    assert summary["instances"] == 7 and summary["statuses"] == {"COMPLETED": 5, "RUNNING": 2}
    assert summary["file"] == "one.jsonl" and summary["taskhub"] == "default"
    assert summary["bytes"] == (tmp_path / "one.jsonl").stat().st_size
    assert not (tmp_path / "one.jsonl.partial").exists()

    imported = ok_json(tmp_path, "import", "one.jsonl", "-c", pg_hub)
    assert imported["instances"] == 7 and imported["exported_from"] == "default"
    assert imported["taskhub"] == pg_hub.rsplit("=", 1)[1]
    assert listed(tmp_path, pg_hub) == before
    assert ok_json(tmp_path, "history", "done-3", "-c", pg_hub) == history

    # To stdout (the summary goes to stderr), and from stdin.
    piped = subprocess.run(
        [*COMMAND, "export", "-", "-c", pg_hub], cwd=tmp_path, capture_output=True, timeout=60, check=False
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr.decode().startswith("Exported 7 instances (5 COMPLETED, 2 RUNNING) of task hub")
    lines = piped.stdout.splitlines()
    assert lines[1:] == (tmp_path / "one.jsonl").read_bytes().splitlines()[1:]  # all but the header's time
    back = f"sqlite:///{tmp_path / 'back.db'}"
    message = run(tmp_path, "import", "-", "-c", back, stdin=piped.stdout)
    assert message.returncode == 0 and message.stdout == ""
    assert message.stderr.startswith(
        "Imported 7 instances (5 COMPLETED, 2 RUNNING) into task hub 'default' from stdin"
    )
    assert listed(tmp_path, back) == before


def test_importing_existing_ids_fails_naming_them_unless_replace(tmp_path: Path, sqlite_db: str) -> None:
    asyncio.run(make_instances(sqlite_db, done=3, waiting=1))
    ok(tmp_path, "export", "out.jsonl", "-c", sqlite_db)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    ok(tmp_path, "import", "out.jsonl", "-c", other)

    again = run(tmp_path, "import", "out.jsonl", "-c", other)
    assert_one_line_error(
        again,
        1,
        "cannot import instance 'done-0' and 3 more",
        "--replace",
        "0 instances imported before this error",
    )

    text = ok(tmp_path, "import", "out.jsonl", "--replace", "-c", other)
    assert text.startswith(
        "Imported 4 instances (3 COMPLETED, 1 RUNNING) into task hub 'default' from out.jsonl"
    )
    assert listed(tmp_path, other) == listed(tmp_path, sqlite_db)


def test_bad_files_are_refused_with_one_line(tmp_path: Path, sqlite_db: str) -> None:
    asyncio.run(make_instances(sqlite_db, done=5, waiting=0))
    ok(tmp_path, "export", "good.jsonl", "-c", sqlite_db)
    target = f"sqlite:///{tmp_path / 'target.db'}"

    (tmp_path / "notes.txt").write_text("dear diary\n")
    assert_one_line_error(
        run(tmp_path, "import", "notes.txt", "-c", target), 1, "notes.txt: not a duratask export"
    )
    assert not (tmp_path / "target.db").exists()  # refused before connecting

    assert_one_line_error(
        run(tmp_path, "import", "missing.jsonl", "-c", target),
        2,
        "cannot read 'missing.jsonl': No such file or directory",
    )

    data = (tmp_path / "good.jsonl").read_bytes()
    lines = data.splitlines(keepends=True)
    (tmp_path / "cut.jsonl").write_bytes(b"".join(lines[:-2]) + lines[-2][:40])
    cut = run(tmp_path, "import", "cut.jsonl", "--batch-size", "2", "-c", target)
    assert_one_line_error(
        cut,
        1,
        "cut.jsonl: line 6, the last, is cut short: the file is truncated",
        "4 instances imported before this error; nothing of the batch that failed",
    )
    assert [i["instance_id"] for i in listed(tmp_path, target)] == ["done-0", "done-1", "done-2", "done-3"]


def test_a_bad_connection_fails_with_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    unreachable = "postgresql://duratask@127.0.0.1:9/nowhere"
    failed = run(tmp_path, "export", "out.jsonl", "-c", unreachable)
    assert_one_line_error(failed, 1, "database error")
    assert list(tmp_path.iterdir()) == []

    bad = run(tmp_path, "export", "out.jsonl", "-c", "sqlite://nohost")
    assert_one_line_error(bad, 2, "needs a path")
    missing_dir = run(
        tmp_path, "export", "out.jsonl", "-c", f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    )
    assert_one_line_error(missing_dir, 1, "cannot open the SQLite database")
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert_one_line_error(run(tmp_path, "import", "empty.jsonl", "-c", unreachable), 1, "the file is empty")
