"""The official SDK's `TaskHubGrpcWorker` alone, as a process of its own (as deployments run
workers apart from the code that starts orchestrations).

`python -m bench.systems.grpc_official_worker HOST:PORT` runs the benchmark's orchestrations and
activities (default concurrency options) until its standard input closes.
"""

from __future__ import annotations

import os
import sys

from durabletask.worker import TaskHubGrpcWorker

from bench.systems.durabletask_system import echo_number, fan_out_sum, hello_cities, say_hello
from bench.systems.grpc_official import _quiet_logger


def main(address: str) -> None:
    worker = TaskHubGrpcWorker(host_address=address, logger=_quiet_logger("durabletask-worker"))
    for orchestrator in (hello_cities, fan_out_sum):
        worker.add_orchestrator(orchestrator)
    for activity in (say_hello, echo_number):
        worker.add_activity(activity)
    worker.start()
    print("READY", flush=True)
    sys.stdin.read()
    # The SDK's stop() can wait a long time on its stream; the parent has its results already.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
