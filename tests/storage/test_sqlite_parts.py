"""The pure parts of the SQLite storage: SQL loading, statement splitting, migrations, prefixes, times."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import pytest

from duratask.storage.base import InstanceFilter, PageCursor
from duratask.storage.sqlite import SchemaVersionError
from duratask.storage.sqlite.filters import instance_conditions, prefix_upper_bound, select_instances_sql
from duratask.storage.sqlite.migrations import (
    Migration,
    checked_sequence,
    load_migrations,
    migrate,
    split_statements,
)
from duratask.storage.sqlite.rows import from_micros, to_micros
from duratask.storage.sqlite.sql import Q, Queries, parse_named_statements


class _AnyParameters(dict[str, object]):
    """Binds None to every named parameter, so any statement can be prepared."""

    def __missing__(self, key: str) -> None:
        return None


@pytest.fixture
def conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, load_migrations(), 0, "test")
    return conn


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, _AnyParameters())]


def test_every_statement_compiles_and_no_hot_path_scans_a_table(conn: sqlite3.Connection) -> None:
    for name in Queries.__annotations__:
        plan = _plan(conn, getattr(Q, name))
        scans = [
            step
            for step in plan
            if step.startswith("SCAN") and "json_each" not in step and "CONSTANT" not in step
        ]
        assert not scans, f"{name}: {plan}"


def test_per_instance_statements_use_the_instance_index(conn: sqlite3.Connection) -> None:
    for name in ("mark_messages", "consume_messages", "unmark_messages", "any_visible_messages"):
        assert any("inbox_by_instance" in step for step in _plan(conn, getattr(Q, name))), name
    assert any("instances_by_parent" in step for step in _plan(conn, Q.child_instance_ids))


@pytest.mark.parametrize(
    "filter",
    [
        InstanceFilter(),
        InstanceFilter(statuses=[]),
        InstanceFilter(instance_id_prefix="job-"),
        InstanceFilter(created_from=datetime(2030, 1, 1, tzinfo=UTC)),
    ],
)
def test_instance_queries_compile(conn: sqlite3.Connection, filter: InstanceFilter) -> None:
    where, params = instance_conditions("hub", filter, PageCursor(datetime(2030, 1, 1, tzinfo=UTC), "x"))
    assert conn.execute(select_instances_sql(where), {**params, "limit": 5}).fetchall() == []


def test_named_statements_parse() -> None:
    text = "-- header comment\n-- name: one\n-- about one\nSELECT 1;\n\n-- name: two\nSELECT\n  2;\n"
    assert parse_named_statements(text) == {"one": "SELECT 1", "two": "SELECT\n  2"}
    with pytest.raises(ValueError, match="twice"):
        parse_named_statements("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")
    with pytest.raises(ValueError, match="lacks"):
        Queries({"get_instance": "SELECT 1"})


def test_statements_split_where_sqlite_says_they_end() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN
        UPDATE t SET x = 'c;d';
    END;
    -- trailing comment
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[0].endswith("DEFAULT 'a;b');")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("CREATE TABLE t (x")


def test_migration_versions_must_be_consecutive() -> None:
    assert [m.version for m in load_migrations()] == list(range(1, len(load_migrations()) + 1))
    with pytest.raises(ValueError, match="gaps"):
        checked_sequence([Migration(1, "a", ""), Migration(3, "c", "")])
    with pytest.raises(ValueError, match="gaps"):
        checked_sequence([Migration(1, "a", ""), Migration(1, "b", "")])


def test_a_pending_migration_is_applied_and_a_failing_one_changes_nothing() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    first = Migration(1, "one", "CREATE TABLE a (x);")
    second = Migration(2, "two", "CREATE TABLE b (x);\nINSERT INTO a VALUES (1);")
    broken = Migration(3, "three", "CREATE TABLE c (x);\nINSERT INTO nowhere VALUES (1);")

    assert migrate(conn, [first], 0, "db") == 1
    assert migrate(conn, [first, second], 0, "db") == 2
    assert conn.execute("SELECT COUNT(*) FROM a").fetchone()[0] == 1
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, [first, second, broken], 0, "db")
    assert conn.execute("SELECT MAX(version) FROM duratask_schema").fetchone()[0] == 2
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'c'").fetchone()[0] == 0
    with pytest.raises(SchemaVersionError, match="db has schema version 2"):
        migrate(conn, [first], 0, "db")


@pytest.mark.parametrize(
    ("prefix", "bound"),
    [
        ("abc", "abd"),
        ("a%", "a&"),
        ("a_", "a`"),
        ("a\U0010ffff", "b"),
        ("\U0010ffff\U0010ffff", None),
        ("a\ud7ff", "a\ue000"),  # the successor skips the surrogates, which UTF-8 cannot hold
        ("", None),
    ],
)
def test_prefix_upper_bound(prefix: str, bound: str | None) -> None:
    assert prefix_upper_bound(prefix) == bound


def test_prefix_bound_selects_exactly_the_prefixed_ids() -> None:
    ids = ["a", "a%", "a%b", "a&", "a_b", "ab", "a\U0010ffff", "a\U0010ffffz", "b", "é", "ê"]
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in ids])
    for prefix in ["a", "a%", "a\U0010ffff", "é", "ab"]:
        bound = prefix_upper_bound(prefix)
        found = [
            row[0]
            for row in conn.execute("SELECT id FROM t WHERE id >= ? AND id < ? ORDER BY id", (prefix, bound))
        ]
        assert found == sorted(i for i in ids if i.startswith(prefix)), prefix


def test_times_are_exact_to_the_microsecond() -> None:
    moment = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert from_micros(to_micros(moment)) == moment
    assert from_micros(to_micros(moment)).tzinfo is not None
    assert to_micros(moment.astimezone(timezone(timedelta(hours=-5)))) == to_micros(moment)
    assert to_micros(moment.replace(tzinfo=None)) == to_micros(moment)  # naive is taken as UTC
    assert to_micros(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1
