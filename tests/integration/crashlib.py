"""Real processes for the crash and many-nodes tests: workers, `duratask serve` nodes, and the checks.

A worker runs in a subprocess (``python -m tests.integration.crashlib CONNECTION ...``) with the
shared end-to-end orchestrations; `duratask serve` runs as the CLI runs it. Tests start a mix of
instances, kill processes with SIGKILL mid-run (or restart PostgreSQL under them), and check that
every instance completes with exactly the expected output and that no history event was recorded
twice.

With ``--record DIR`` a worker writes one JSON line per activity execution and per orchestration
episode it held (who, what, from when to when) to ``DIR/<pid>.jsonl``; ``overlaps`` then finds two
holders of one work item at the same time. The recorded span is strictly inside the real hold:
an activity from its first to its last line of code, an episode from the moment its lease call
returned to the moment its completion was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from duratask import DurableTaskClient, OrchestrationQuery, OrchestrationRuntimeStatus, Worker
from duratask import history as h

ROOT = Path(__file__).resolve().parents[2]
#: How long a recorded activity lasts at least: long enough that two holders would overlap.
RECORDED_ACTIVITY_SECONDS = 0.01


# --- processes ---------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _spawn(args: list[str], log: Path | None) -> subprocess.Popen[bytes]:
    """Start ``args`` in the project root, its output appended to ``log`` (the child keeps it open)."""
    if log is None:
        return subprocess.Popen(
            args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
    with open(log, "ab") as out:
        return subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)


def start_worker(
    connection: str,
    concurrency: int = 20,
    *,
    record: Path | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A worker process running the shared orchestrations against ``connection``."""
    args = [sys.executable, "-m", "tests.integration.crashlib", connection, "--concurrency", str(concurrency)]
    if record is not None:
        args += ["--record", str(record)]
    return _spawn(args, log)


def start_serve(
    storage: str, port: int, taskhub: str = "default", *, log: Path | None = None, wait: bool = True
) -> subprocess.Popen[bytes]:
    """`duratask serve` as a user starts it; returns once it accepts connections (unless not ``wait``:
    then call ``wait_until_serving``, so that several nodes start side by side)."""
    args = [
        sys.executable, "-m", "duratask", "serve", "--storage", storage, "--port", str(port),
        "--no-dashboard", "--taskhub", taskhub, "--log-level", "warning",
    ]  # fmt: skip
    proc = _spawn(args, log)
    if wait:
        wait_until_serving(port, proc)
    return proc


def wait_until_serving(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"duratask serve on port {port} exited with {proc.returncode}")
            try:
                grpc.channel_ready_future(channel).result(timeout=0.2)
                return
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"duratask serve on port {port} did not start in {timeout}s") from None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def endpoint(port: int, taskhub: str = "default") -> str:
    return f"Endpoint=http://127.0.0.1:{port};TaskHub={taskhub};Authentication=None"


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """SIGTERM (a clean stop), SIGKILL if it does not end in time; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill9(proc)
    return proc.returncode


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to put started processes in; whatever is still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                kill9(proc)


def log_tails(directory: Path, chars: int = 3000) -> str:
    """The end of every process log in ``directory`` (for assertion messages)."""
    parts = [
        f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(directory.glob("*.log"))
    ]
    return "\n".join(parts)


# --- the mix of instances ----------------------------------------------------------------------

Expected = dict[str, Any]
#: Timer length of the "sleepy" instances: short, so that the suite stays fast.
TIMER_SECONDS = 0.3


def expected_of(i: int, with_sub_orchestrations: bool) -> tuple[str, Any, Any]:
    """Orchestrator, input and expected output of the ``i``-th instance of the mix."""
    kind = i % (4 if with_sub_orchestrations else 3)
    if kind == 0:  # a chain of three activities
        return "hello_cities", None, ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    if kind == 1:  # a fan-out of 5..15 activities
        n = 5 + i % 11
        return "fan_out", n, sum(x * 2 for x in range(n))
    if kind == 2:  # a durable timer
        return "sleepy", TIMER_SECONDS, "woke"
    return "parent", 2, [0, 2]  # two sub-orchestrations, each a fan-out


async def start_mix(
    client: DurableTaskClient, count: int, with_sub_orchestrations: bool = False, prefix: str = "crash"
) -> Expected:
    """Start ``count`` instances: chains, fan-outs, timers (and sub-orchestrations); returns id -> output."""
    expected: Expected = {}
    for i in range(count):
        name, value, output = expected_of(i, with_sub_orchestrations)
        iid = f"{prefix}-{i:04d}"
        await client.schedule_new_orchestration_instance(name, value, instance_id=iid)
        expected[iid] = output
    return expected


async def instance_statuses(client: DurableTaskClient, prefix: str) -> dict[str, OrchestrationRuntimeStatus]:
    """Every instance whose id starts with ``prefix`` (sub-orchestrations too) and its status."""
    found: dict[str, OrchestrationRuntimeStatus] = {}
    token = None
    while True:
        page = await client.get_all_instances(
            OrchestrationQuery(instance_id_prefix=prefix, page_size=1000, continuation_token=token)
        )
        found.update((m.instance_id, m.runtime_status) for m in page.instances)
        token = page.continuation_token
        if token is None:
            return found


async def count_completed(client: DurableTaskClient, ids: list[str], prefix: str = "crash") -> int:
    statuses = await instance_statuses(client, prefix)
    return sum(statuses.get(iid) is OrchestrationRuntimeStatus.COMPLETED for iid in ids)


async def wait_until_partly_done(
    client: DurableTaskClient, ids: list[str], fraction: float, timeout: float, prefix: str = "crash"
) -> int:
    """Wait until at least ``fraction`` of ``ids`` completed; returns how many had."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await count_completed(client, ids, prefix)
        if done >= len(ids) * fraction:
            return done
        await asyncio.sleep(0.05)
    raise AssertionError(f"the workers made no progress in {timeout}s")


def duplicate_events(history: list[h.HistoryEvent]) -> list[str]:
    """Events recorded twice: the same task scheduled/completed, started or finished twice."""
    keys: list[tuple[str, int]] = []
    for e in history:
        if isinstance(e, (h.TaskScheduled, h.TimerCreated, h.SubOrchestrationInstanceCreated, h.EventSent)):
            keys.append((type(e).__name__, e.event_id))
        elif isinstance(
            e,
            (
                h.TaskCompleted,
                h.TaskFailed,
                h.SubOrchestrationInstanceCompleted,
                h.SubOrchestrationInstanceFailed,
            ),
        ):
            keys.append(("result", e.task_scheduled_id))
        elif isinstance(e, h.TimerFired):
            keys.append(("TimerFired", e.timer_id))
        elif isinstance(e, (h.ExecutionStarted, h.ExecutionCompleted)):
            keys.append((type(e).__name__, 0))
    return [f"{k}#{i}" for (k, i), n in Counter(keys).items() if n > 1]


async def check_all_completed(
    client: DurableTaskClient, expected: Expected, timeout: float, prefix: str | None = None
) -> None:
    """Every instance of ``expected`` completes with exactly its output, and no history (theirs, and
    with ``prefix`` that of every instance under it: their sub-orchestrations) holds an event twice."""
    deadline = time.monotonic() + timeout
    for iid, output in expected.items():
        remaining = max(0.1, deadline - time.monotonic())
        meta = await client.wait_for_instance_completion(iid, True, timeout=remaining)
        assert meta is not None, iid
        assert meta.runtime_status is OrchestrationRuntimeStatus.COMPLETED, (iid, meta.failure_details)
        assert meta.read_output_as(type(output)) == output, iid
    everyone = list(expected)
    if prefix is not None:
        statuses = await instance_statuses(client, prefix)
        unfinished = {i: s.name for i, s in statuses.items() if s is not OrchestrationRuntimeStatus.COMPLETED}
        assert not unfinished, unfinished
        everyone = sorted(statuses)
    for iid in everyone:
        dups = duplicate_events(await client.get_orchestration_history(iid))
        assert not dups, (iid, dups)


# --- scenarios shared by the storages ------------------------------------------------------------

CRASH_INSTANCES = 500


async def kill_a_worker_mid_run(connection: str, logs: Path, count: int = CRASH_INSTANCES) -> int:
    """Start ``count`` instances of the mix, kill -9 the worker once some (not all) completed,
    start another: all complete exactly as expected, no event twice. Returns how many had
    completed at the kill."""
    async with DurableTaskClient(connection) as client:
        with processes() as running:
            first = start_worker(connection, log=logs / "worker-1.log")  # boots while instances start
            running.append(first)
            expected = await start_mix(client, count, with_sub_orchestrations=True)
            done = await wait_until_partly_done(client, list(expected), 0.2, timeout=90)
            kill9(first)
            assert done < len(expected), (
                "the worker finished everything before the kill: the test proves nothing"
            )
            running.append(start_worker(connection, log=logs / "worker-2.log"))
            await check_all_completed(client, expected, timeout=120, prefix="crash-")
        return done


async def kill_a_serve_node_mid_run(
    storage: str, logs: Path, *, count: int, taskhub: str = "default", client_connection: str | None = None
) -> None:
    """A worker reaches the instances through `duratask serve` node A; kill -9 A mid-run, start it
    again on the same port: the worker (never restarted) reconnects and finishes everything.

    The client talks to ``client_connection`` (default: a second node B over the same storage,
    which must then be shared: PostgreSQL).
    """
    port_a = free_port()
    record = logs / "records"
    with processes() as running:
        node_a = start_serve(storage, port_a, taskhub, log=logs / "serve-a-1.log", wait=False)
        running.append(node_a)
        if client_connection is None:
            port_b = free_port()
            node_b = start_serve(storage, port_b, taskhub, log=logs / "serve-b.log", wait=False)
            running.append(node_b)
            wait_until_serving(port_b, node_b)
            client_connection = endpoint(port_b, taskhub)
        wait_until_serving(port_a, node_a)
        async with DurableTaskClient(client_connection) as client:
            worker = start_worker(endpoint(port_a, taskhub), record=record, log=logs / "worker.log")
            running.append(worker)
            expected = await start_mix(client, count, with_sub_orchestrations=True)
            done = await wait_until_partly_done(client, list(expected), 0.2, timeout=90)
            kill9(node_a)
            assert done < len(expected), "everything finished before the kill: the test proves nothing"
            killed_at = time.time()
            running.append(start_serve(storage, port_a, taskhub, log=logs / "serve-a-2.log"))
            await check_all_completed(client, expected, timeout=120, prefix="crash-")
        assert worker.poll() is None, f"the worker died\n{log_tails(logs)}"
        # Some instances were unfinished at the kill: the worker held work through the new node.
        assert any(r.start > killed_at for r in read_records(record)), "no work through the restarted node"
        for proc in running:
            if proc is not node_a:
                assert stop(proc) == 0, log_tails(logs)


# --- records of who held which work item when ----------------------------------------------------


@dataclass(frozen=True)
class Held:
    """One worker process holding one work item from ``start`` to ``end`` (wall clock)."""

    kind: str  # "activity" | "orchestration"
    instance_id: str
    task_id: int  # -1 for an orchestration episode
    pid: int
    start: float
    end: float
    applied: bool = True  # for episodes: whether the completion was taken


def read_records(directory: Path) -> list[Held]:
    records = []
    for path in directory.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.endswith("}"):  # a process killed mid-write leaves half a line
                records.append(Held(**json.loads(line)))
    return records


def overlaps(records: list[Held]) -> list[tuple[Held, Held]]:
    """Pairs of records holding the same work item at the same time (an activity call, or an
    orchestration instance: one episode at a time)."""
    by_item: dict[tuple[str, str, int], list[Held]] = defaultdict(list)
    for r in records:
        by_item[(r.kind, r.instance_id, r.task_id)].append(r)
    found = []
    for spans in by_item.values():
        spans.sort(key=lambda r: r.start)
        for a, b in itertools.pairwise(spans):
            if b.start < a.end:
                found.append((a, b))
    return found


class _Recorder:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._file = open(directory / f"{os.getpid()}.jsonl", "a", buffering=1)  # noqa: SIM115 - process-long

    def write(self, held: Held) -> None:
        self._file.write(json.dumps(held.__dict__) + "\n")


class RecordingBackend:
    """The worker's real backend, noting when each orchestration episode was held (not a mock:
    every call goes through to the backend unchanged)."""

    def __init__(self, inner: Any, recorder: _Recorder) -> None:
        self._inner = inner
        self._recorder = recorder
        self._leased_at: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def lease_orchestrations(self, limit: int) -> list[Any]:
        items = await self._inner.lease_orchestrations(limit)
        now = time.time()
        for item in items:
            self._leased_at[item.token] = now
        return list(items)

    async def complete_orchestrations(self, done: list[tuple[Any, Any]], **options: Any) -> list[bool]:
        sent = time.time()
        applied: list[bool] = await self._inner.complete_orchestrations(done, **options)
        for (item, _), ok in zip(done, applied):
            start = self._leased_at.pop(item.token, sent)
            self._recorder.write(Held("orchestration", item.instance_id, -1, os.getpid(), start, sent, ok))
        return applied


def _recorded(fn: Callable[..., Any], recorder: _Recorder) -> Callable[..., Any]:
    async def activity(ctx: Any, value: Any) -> Any:
        start = time.time()
        result = fn(ctx, value)
        if asyncio.iscoroutine(result):
            result = await result
        await asyncio.sleep(RECORDED_ACTIVITY_SECONDS)
        recorder.write(Held("activity", ctx.orchestration_id, ctx.task_id, os.getpid(), start, time.time()))
        return result

    return activity


async def _run_worker(connection: str, concurrency: int, record: Path | None) -> None:
    from duratask.connection import open_backend
    from tests.e2e import orchestrations as o

    backend: Any = await open_backend(
        connection, max_concurrent_orchestrations=concurrency, max_concurrent_activities=concurrency
    )
    recorder = _Recorder(record) if record is not None else None
    worker = Worker(
        backend=backend if recorder is None else RecordingBackend(backend, recorder),
        max_concurrent_orchestrations=concurrency,
        max_concurrent_activities=concurrency,
        shutdown_timeout=1,
    )
    if recorder is None:
        o.register_all(worker)
    else:
        _register_recorded(worker, recorder)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    try:
        async with worker:
            await stopped.wait()
    finally:
        await backend.close()


def _register_recorded(worker: Worker, recorder: _Recorder) -> None:
    from tests.e2e import orchestrations as o

    for activity in (o.say_hello, o.double):
        worker.add_activity(_recorded(activity, recorder), name=activity.__name__)
    for orchestrator in (o.hello_cities, o.fan_out, o.sleepy, o.parent):
        worker.add_orchestrator(orchestrator)


def main() -> None:
    parser = argparse.ArgumentParser(description="a worker process of the crash tests")
    parser.add_argument("connection")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args()
    asyncio.run(_run_worker(args.connection, args.concurrency, args.record))


if __name__ == "__main__":
    main()
