"""Kill -9 processes in the middle of 500 orchestrations on PostgreSQL, and restart PostgreSQL
itself mid-run: the surviving (or restarted) processes finish every instance, exactly once."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

from duratask import DurableTaskClient
from tests.pgserver import PostgresServer

from .crashlib import (
    CRASH_INSTANCES,
    check_all_completed,
    endpoint,
    free_port,
    kill_a_serve_node_mid_run,
    kill_a_worker_mid_run,
    log_tails,
    processes,
    start_mix,
    start_serve,
    start_worker,
    stop,
    wait_until_partly_done,
)


def _hub() -> str:
    return f"crash_{uuid.uuid4().hex[:10]}"  # the session's database is shared: a hub of our own


async def test_kill9_worker_mid_run_postgres(pg_url: str, tmp_path: Path) -> None:
    conn = f"{pg_url}?taskhub={_hub()}&lease_seconds=2"
    done = await kill_a_worker_mid_run(conn, tmp_path)
    assert 0 < done < CRASH_INSTANCES


async def test_kill9_serve_node_mid_run_postgres(pg_url: str, tmp_path: Path) -> None:
    # Two nodes on one database: the client on B, the worker on A; A dies and comes back.
    await kill_a_serve_node_mid_run(f"{pg_url}?lease_seconds=2", tmp_path, count=200, taskhub=_hub())


async def test_postgres_restart_mid_run(pg_private_server: PostgresServer, tmp_path: Path) -> None:
    """PostgreSQL crashes and comes back under an embedded worker, a serve node with a worker of its
    own, and the client: each recovers by itself, and every instance completes exactly once."""
    database = pg_private_server.create_database()
    storage = f"{database}?lease_seconds=2"
    with processes() as running:
        port = free_port()
        running.append(start_serve(storage, port, log=tmp_path / "serve.log"))
        embedded = start_worker(storage, log=tmp_path / "worker-embedded.log")
        remote = start_worker(endpoint(port), log=tmp_path / "worker-remote.log")
        running += [embedded, remote]
        async with DurableTaskClient(storage) as client:
            expected = await start_mix(client, 300, with_sub_orchestrations=True)
            done = await wait_until_partly_done(client, list(expected), 0.2, timeout=90)
            await asyncio.to_thread(pg_private_server.restart, "immediate", 1.0)
            assert done < len(expected), "everything finished before the restart: the test proves nothing"
            await check_all_completed(client, expected, timeout=120, prefix="crash-")

            # Each worker alone, to show that each one came back (not only the faster one): the
            # embedded worker frozen, the node and its worker run new instances; then the other way.
            embedded.send_signal(signal.SIGSTOP)
            try:
                alone = await start_mix(client, 8, with_sub_orchestrations=True, prefix="remote")
                await check_all_completed(client, alone, timeout=60, prefix="remote-")
            finally:
                embedded.send_signal(signal.SIGCONT)
            assert stop(remote) == 0, log_tails(tmp_path)
            alone = await start_mix(client, 8, with_sub_orchestrations=True, prefix="embedded")
            await check_all_completed(client, alone, timeout=60, prefix="embedded-")
        for proc in running:
            assert stop(proc) == 0, log_tails(tmp_path)
