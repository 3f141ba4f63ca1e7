"""Several `duratask serve` processes over one PostgreSQL database (SPEC §4): a worker on one
server runs what a client starts through another."""

from __future__ import annotations

import uuid
from typing import Any

from durabletask import client as dt_client
from durabletask import task
from durabletask import worker as dt_worker
from durabletask.client import OrchestrationStatus

from tests.compat.serverlib import ServerProcess, ServerThread, quiet_logger


def double(ctx: task.ActivityContext, n: int) -> int:
    return 2 * n


def doubling_chain(ctx: task.OrchestrationContext, n: int) -> Any:
    for _ in range(3):
        n = yield ctx.call_activity(double, input=n)
    return n


def test_servers_sharing_a_database_share_the_work(pg_url: str) -> None:
    hub = f"serve_{uuid.uuid4().hex[:10]}"  # the session's database is shared: a hub of our own
    metadata = [("taskhub", hub)]
    front = ServerProcess(pg_url, taskhubs=[hub])  # clients talk to this one
    back = ServerThread(storage=pg_url, taskhubs=(hub,))  # the worker talks to this one
    worker = dt_worker.TaskHubGrpcWorker(
        host_address=back.address, metadata=metadata, logger=quiet_logger("worker")
    )
    worker.add_orchestrator(doubling_chain)
    worker.add_activity(double)
    worker.start()
    client = dt_client.TaskHubGrpcClient(
        host_address=front.address, metadata=metadata, logger=quiet_logger("client")
    )
    try:
        ids = [client.schedule_new_orchestration(doubling_chain, input=i) for i in range(5)]
        for i, instance_id in enumerate(ids):
            state = client.wait_for_orchestration_completion(instance_id, timeout=60)
            assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED
            assert state.get_output() == 8 * i
    finally:
        client.close()
        worker.stop()
        back.stop()
        code, output = front.terminate()
    assert code == 0, output
