"""Many nodes on one PostgreSQL database (issue 4, item 4): two `duratask serve` processes and
three worker processes (two through the nodes, one embedded). A client on node B drives a worker on
node A; with everyone running, each work item is held by one worker at a time and each
orchestration completes once."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

from duratask import DurableTaskClient

from .crashlib import (
    Held,
    check_all_completed,
    endpoint,
    free_port,
    log_tails,
    overlaps,
    processes,
    read_records,
    start_mix,
    start_serve,
    start_worker,
    stop,
    wait_until_serving,
)


async def test_many_nodes_share_one_database(pg_url: str, tmp_path: Path) -> None:
    hub = f"nodes_{uuid.uuid4().hex[:10]}"  # the session's database is shared: a hub of our own
    storage = f"{pg_url}?taskhub={hub}"
    record = tmp_path / "records"
    with processes() as running:
        port_a, port_b = free_port(), free_port()
        node_a = start_serve(pg_url, port_a, hub, log=tmp_path / "serve-a.log", wait=False)
        node_b = start_serve(pg_url, port_b, hub, log=tmp_path / "serve-b.log", wait=False)
        via_a = start_worker(endpoint(port_a, hub), record=record, log=tmp_path / "worker-a.log")
        running += [node_a, node_b, via_a]
        wait_until_serving(port_a, node_a)
        wait_until_serving(port_b, node_b)

        async with DurableTaskClient(endpoint(port_b, hub)) as client:
            # Only the worker on node A runs: what the client starts through node B reaches it.
            first = await start_mix(client, 20, with_sub_orchestrations=True, prefix="one")
            await check_all_completed(client, first, timeout=60, prefix="one-")
            assert {r.pid for r in read_records(record)} == {via_a.pid}

            embedded = start_worker(storage, record=record, log=tmp_path / "worker-embedded.log")
            via_b = start_worker(endpoint(port_b, hub), record=record, log=tmp_path / "worker-b.log")
            running += [embedded, via_b]
            many = await start_mix(client, 200, with_sub_orchestrations=True, prefix="many")
            await check_all_completed(client, many, timeout=120, prefix="many-")

        records = read_records(record)
        clashes = overlaps(records)
        assert not clashes, clashes[:5]
        # Nothing crashed and no lease ran out: every activity call ran exactly once, and every
        # episode's completion was taken.
        runs = Counter((r.instance_id, r.task_id) for r in records if r.kind == "activity")
        assert [key for key, n in runs.items() if n > 1] == []
        assert all(r.applied for r in records if r.kind == "orchestration")
        by_worker = Counter(r.pid for r in records if r.instance_id.startswith("many-"))
        for worker in (via_a, embedded, via_b):
            assert by_worker[worker.pid] > 0, (by_worker, log_tails(tmp_path))
        for proc in running:
            assert stop(proc) == 0, log_tails(tmp_path)


def test_overlaps_finds_two_holders_of_one_work_item_at_once() -> None:
    # The check above proves something only if it can fail: two holders of one item, overlapping.
    first = Held("activity", "i", 3, pid=1, start=10.0, end=11.0)
    later = Held("activity", "i", 3, pid=2, start=11.5, end=12.0)  # a re-delivery, after the first
    other_task = Held("activity", "i", 4, pid=2, start=10.5, end=10.6)
    assert overlaps([first, later, other_task]) == []
    clash = Held("activity", "i", 3, pid=2, start=10.9, end=11.2)
    assert overlaps([later, clash, first, other_task]) == [(first, clash)]
    episode = Held("orchestration", "i", -1, pid=1, start=1.0, end=2.0)
    assert overlaps([episode, Held("orchestration", "i", -1, pid=2, start=1.5, end=1.7)]) != []
