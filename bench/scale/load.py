"""Set-up only: write a dataset straight into a storage's tables, much faster than running instances.

The schema is the storage's own (created by opening a client first), and so are the row formats:
records become rows through each storage's `rows.instance_params`, and SQLite rows go in through
the storage's own INSERT statements. PostgreSQL rows go in through COPY, then `VACUUM ANALYZE`
does at once what autovacuum would do shortly after such a load (statistics, visibility map).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import psycopg

from bench.scale.dataset import StoredInstance

SQLITE_BATCH = 20_000


def _batches(items: Iterable[StoredInstance], size: int) -> Iterator[list[StoredInstance]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def load_sqlite(path: str, taskhub: str, items: Iterable[StoredInstance]) -> None:
    from duratask.storage.sqlite.rows import instance_params, to_micros
    from duratask.storage.sqlite.sql import Q

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # set-up only: the measured client syncs as usual
        for batch in _batches(items, SQLITE_BATCH):
            conn.execute("BEGIN")
            conn.executemany(Q.insert_instance, [instance_params(taskhub, item.record) for item in batch])
            conn.executemany(
                Q.insert_history,
                [
                    {"taskhub": taskhub, "instance_id": item.record.instance_id, "seq": seq, "event": event}
                    for item in batch
                    for seq, event in enumerate(item.history)
                ],
            )
            conn.executemany(
                Q.insert_message,
                [
                    {
                        "taskhub": taskhub,
                        "instance_id": item.record.instance_id,
                        "visible_at": to_micros(visible_at),
                        "event": event,
                    }
                    for item in batch
                    for visible_at, event in item.inbox
                ],
            )
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def load_postgres(url: str, taskhub: str, items: Iterable[StoredInstance]) -> None:
    from duratask.storage.postgres.rows import INSTANCE_COLUMNS, instance_params

    instance_columns = ", ".join(("taskhub", *INSTANCE_COLUMNS, "history_length"))
    # Three COPY streams at once, one per table, each on its own connection.
    with (
        psycopg.connect(url) as instances_conn,
        psycopg.connect(url) as history_conn,
        psycopg.connect(url) as inbox_conn,
        instances_conn.cursor().copy(f"COPY duratask_instances ({instance_columns}) FROM STDIN") as instances,
        history_conn.cursor().copy(
            "COPY duratask_history (taskhub, instance_id, seq, event) FROM STDIN"
        ) as history,
        inbox_conn.cursor().copy(
            "COPY duratask_inbox (taskhub, instance_id, visible_at, event) FROM STDIN"
        ) as inbox,
    ):
        for item in items:
            params: dict[str, Any] = instance_params(taskhub, item.record)
            instance_id = item.record.instance_id
            instances.write_row(
                [taskhub, *(params[column] for column in INSTANCE_COLUMNS), len(item.history)]
            )
            for seq, event in enumerate(item.history):
                history.write_row((taskhub, instance_id, seq, event))
            for visible_at, event in item.inbox:
                inbox.write_row((taskhub, instance_id, visible_at, event))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
