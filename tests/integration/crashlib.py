"""Kill -9 crash scenarios shared by the SQLite and PostgreSQL crash tests.

A worker runs in a subprocess; the test starts a mix of instances, kills the worker with SIGKILL
mid-run, starts a fresh worker, and checks that every instance completes with the right output and
that no history event was recorded twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from duratask import DurableTaskClient, OrchestrationRuntimeStatus
from duratask import history as h

ROOT = Path(__file__).resolve().parents[2]

WORKER_SCRIPT = """
import sys
from duratask import Worker
from tests.e2e import orchestrations as o
worker = o.register_all(Worker(sys.argv[1], max_concurrent_activities=int(sys.argv[2]), shutdown_timeout=1))
worker.run()
"""


def start_worker(connection: str, concurrency: int = 20) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, connection, str(concurrency)], cwd=ROOT, env=env
    )


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


Expected = dict[str, Any]


async def start_mix(client: DurableTaskClient, count: int, with_sub_orchestrations: bool = False) -> Expected:
    """Start ``count`` instances: chains, fan-outs, timers (and sub-orchestrations); returns id -> output."""
    expected: Expected = {}
    for i in range(count):
        kind = i % (4 if with_sub_orchestrations else 3)
        iid = f"crash-{i:04d}"
        if kind == 0:
            await client.schedule_new_orchestration_instance("hello_cities", instance_id=iid)
            expected[iid] = ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
        elif kind == 1:
            n = 5 + i % 11
            await client.schedule_new_orchestration_instance("fan_out", n, instance_id=iid)
            expected[iid] = sum(x * 2 for x in range(n))
        elif kind == 2:
            await client.schedule_new_orchestration_instance("sleepy", 0.5, instance_id=iid)
            expected[iid] = "woke"
        else:
            await client.schedule_new_orchestration_instance("parent", 2, instance_id=iid)
            expected[iid] = [0, 2]
    return expected


async def count_completed(client: DurableTaskClient, ids: list[str]) -> int:
    done = 0
    for iid in ids:
        meta = await client.get_instance(iid)
        done += bool(meta and meta.runtime_status is OrchestrationRuntimeStatus.COMPLETED)
    return done


async def wait_until_partly_done(client: DurableTaskClient, ids: list[str], fraction: float, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await count_completed(client, ids)
        if done >= len(ids) * fraction:
            return done
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker made no progress in {timeout}s")


def duplicate_events(history: list[h.HistoryEvent]) -> list[str]:
    """Events recorded twice: the same task scheduled/completed, started or finished twice."""
    keys: list[tuple[str, int]] = []
    for e in history:
        if isinstance(e, (h.TaskScheduled, h.TimerCreated, h.SubOrchestrationInstanceCreated, h.EventSent)):
            keys.append((type(e).__name__, e.event_id))
        elif isinstance(e, (h.TaskCompleted, h.TaskFailed, h.SubOrchestrationInstanceCompleted, h.SubOrchestrationInstanceFailed)):
            keys.append(("result", e.task_scheduled_id))
        elif isinstance(e, h.TimerFired):
            keys.append(("TimerFired", e.timer_id))
        elif isinstance(e, (h.ExecutionStarted, h.ExecutionCompleted)):
            keys.append((type(e).__name__, 0))
    return [f"{k}#{i}" for (k, i), n in Counter(keys).items() if n > 1]


async def check_all_completed(client: DurableTaskClient, expected: Expected, timeout: float) -> None:
    pending = list(expected)
    deadline = time.monotonic() + timeout
    for iid in pending:
        remaining = max(0.1, deadline - time.monotonic())
        meta = await client.wait_for_instance_completion(iid, True, timeout=remaining)
        assert meta is not None, iid
        assert meta.runtime_status is OrchestrationRuntimeStatus.COMPLETED, (iid, meta.failure_details)
        assert meta.read_output_as(type(expected[iid])) == expected[iid], iid
        dups = duplicate_events(await client.get_orchestration_history(iid))
        assert not dups, (iid, dups)
