"""Kill -9 a worker in the middle of 200 orchestrations on a SQLite file; a new worker finishes them."""

from __future__ import annotations

from pathlib import Path

from duratask import DurableTaskClient

from .crashlib import check_all_completed, kill9, start_mix, start_worker, wait_until_partly_done


async def test_kill9_worker_mid_run_sqlite(tmp_path: Path) -> None:
    conn = f"sqlite:///{tmp_path / 'crash.db'}?lease_seconds=2"
    async with DurableTaskClient(conn) as client:
        expected = await start_mix(client, 200)
        first = start_worker(conn)
        try:
            done = await wait_until_partly_done(client, list(expected), 0.2, timeout=60)
            assert done < len(expected), "worker finished everything before the kill; the test proves nothing"
        finally:
            kill9(first)
        second = start_worker(conn)
        try:
            await check_all_completed(client, expected, timeout=120)
        finally:
            second.terminate()
            second.wait(20)
