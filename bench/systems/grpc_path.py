"""What the gRPC-path systems share: a scheduler server in a process of its own, and CPU accounting.

Three systems go through gRPC (bench/systems/grpc_*.py): the official Python SDK against
`duratask serve` (durable SQLite) and against its own in-memory backend (durabletask.testing),
and duratask's SDK over `Endpoint=` against `duratask serve`. Each server runs as a subprocess
of the benchmark process, so its CPU can be read apart from the client's and the worker's:
drivers report `server_cpu_ms_per_instance` and `sdk_cpu_ms_per_instance` (this process: client
and worker), counted from the moment the server is up, warm-up instances included.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.driver import WorkloadError
from bench.pg import process_cpu_s

SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """A running server subprocess: where to dial it and how much CPU it has used."""

    address: str
    pid: int

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)


@dataclass
class CpuMeter:
    """CPU of the server and of the SDK per instance started, from construction on.

    The SDK is this process (client, and worker unless it runs apart) plus ``worker_pids``, the
    processes of a worker that runs apart (reported also on their own). Besides, the share of one
    core each used while the workload ran (from the first instance started to the report), which
    says whether a process was saturated: ``*_cores`` (1.0 = one core all the time)."""

    server: ServerProcess
    worker_pids: tuple[int, ...] = ()
    instances: int = 0
    _server_start: float = field(init=False)
    _own_start: float = field(init=False)
    _workers_start: float = field(init=False)
    _first: tuple[float, float, float, float] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._server_start = self.server.cpu_s()
        self._own_start = time.process_time()
        self._workers_start = self._workers_cpu_s()

    def _workers_cpu_s(self) -> float:
        return sum(process_cpu_s(pid) for pid in self.worker_pids)

    def _readings(self) -> tuple[float, float, float, float]:
        return time.monotonic(), self.server.cpu_s(), time.process_time(), self._workers_cpu_s()

    def count_instance(self) -> None:
        if self._first is None:
            self._first = self._readings()
        self.instances += 1

    def metrics(self) -> dict[str, float]:
        per = max(self.instances, 1)
        now, server, own, workers = self._readings()
        figures = {
            "server_cpu_ms_per_instance": (server - self._server_start) * 1000.0 / per,
            "sdk_cpu_ms_per_instance": (own - self._own_start + workers - self._workers_start) * 1000.0 / per,
        }
        if self.worker_pids:
            figures["worker_cpu_ms_per_instance"] = (workers - self._workers_start) * 1000.0 / per
        if self._first is not None and now > self._first[0]:
            wall = now - self._first[0]
            figures["server_cores"] = (server - self._first[1]) / wall
            figures["sdk_cores"] = (own - self._first[2] + workers - self._first[3]) / wall
            if self.worker_pids:
                figures["worker_cores"] = (workers - self._first[3]) / wall
        return figures


async def _wait_listening(process: asyncio.subprocess.Process, port: int) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise WorkloadError(f"server exited with code {process.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise WorkloadError(f"server did not listen on port {port} within {SERVER_START_TIMEOUT_S:.0f} s")


@asynccontextmanager
async def server_process(command: Sequence[str], port: int) -> AsyncIterator[ServerProcess]:
    """Run `command` (which must listen on `port`); SIGTERM it afterwards (SIGKILL if it lingers).

    Its output goes to this process's stderr, which bench/run.py keeps in the run's log.
    """
    process = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.PIPE, stdout=sys.stderr)
    try:
        await _wait_listening(process, port)
        yield ServerProcess(f"127.0.0.1:{port}", process.pid)
    finally:
        await end_child(process, SERVER_STOP_TIMEOUT_S, terminate=True)


async def end_child(process: asyncio.subprocess.Process, grace: float, *, terminate: bool = False) -> None:
    """Ask a child process to end (SIGTERM with ``terminate``, else the end of its standard input,
    which the benchmark's helper processes wait for), give it ``grace`` seconds, then SIGKILL it."""
    if terminate and process.returncode is None:
        process.terminate()
    elif process.stdin is not None and not process.stdin.is_closing():
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        process.kill()
        await process.wait()


def duratask_serve_command(workdir: Path, port: int) -> list[str]:
    """`duratask serve` on a SQLite file in the run's directory (durable: the server's default)."""
    return [
        sys.executable,
        "-m",
        "duratask",
        "serve",
        "--storage",
        f"sqlite:///{workdir / 'serve.db'}",
        "--port",
        str(port),
        "--no-dashboard",
        "--log-level",
        "warning",
    ]


def in_memory_backend_command(port: int) -> list[str]:
    """The official SDK's in-memory backend (durabletask.testing): the durabletask system's sidecar
    script (it also stops when its standard input closes; SIGTERM ends it here)."""
    return [sys.executable, "-m", "bench.systems.durabletask_sidecar", str(port)]
