"""The official SDK's `TaskHubGrpcWorker` alone, as a process of its own (as deployments run
workers apart from the code that starts orchestrations).

`python -m bench.systems.grpc_official_worker HOST:PORT` runs the benchmark's orchestrations and
activities (default concurrency options) until its standard input closes.
"""

from __future__ import annotations

import os
import sys

from bench.systems.durabletask_system import official_worker


def main(address: str) -> None:
    worker = official_worker(address)
    worker.start()
    print("READY", flush=True)
    sys.stdin.read()
    # The SDK's stop() can wait a long time on its stream; the parent has its results already.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
