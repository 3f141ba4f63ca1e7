"""Kill -9 processes in the middle of 500 orchestrations on a SQLite file; the rest finish them."""

from __future__ import annotations

from pathlib import Path

from .crashlib import CRASH_INSTANCES, kill_a_serve_node_mid_run, kill_a_worker_mid_run


async def test_kill9_worker_mid_run_sqlite(tmp_path: Path) -> None:
    conn = f"sqlite:///{tmp_path / 'crash.db'}?lease_seconds=2"
    done = await kill_a_worker_mid_run(conn, tmp_path)
    assert 0 < done < CRASH_INSTANCES


async def test_kill9_serve_node_mid_run_sqlite(tmp_path: Path) -> None:
    database = tmp_path / "served.db"
    await kill_a_serve_node_mid_run(
        f"sqlite:///{database}?lease_seconds=2",
        tmp_path,
        count=200,
        client_connection=f"sqlite:///{database}",
    )
