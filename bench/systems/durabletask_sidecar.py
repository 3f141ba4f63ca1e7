"""The official in-memory Durable Task sidecar (durabletask.testing) as a process of its own.

`python -m bench.systems.durabletask_sidecar PORT` prints `READY` once serving and stops when its
standard input closes, so it never outlives the benchmark process that started it.
"""

from __future__ import annotations

import sys

from durabletask.testing import create_test_backend


def main(port: int) -> None:
    backend = create_test_backend(port=port)
    print("READY", flush=True)
    sys.stdin.read()
    backend.stop(grace=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
