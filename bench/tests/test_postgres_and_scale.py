"""The PostgreSQL runner and the scale benchmark, for real on tiny sizes (fresh processes, real servers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scale.dataset import MAX_HISTORY, MIN_HISTORY, Spec, instances
from duratask.models import OrchestrationRuntimeStatus as Status

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_the_dataset_is_deterministic_and_shaped_like_real_use() -> None:
    first, again = list(instances(Spec(instances=2000))), list(instances(Spec(instances=2000)))
    assert [i.record.instance_id for i in first] == [i.record.instance_id for i in again]
    assert len({i.record.instance_id for i in first}) == 2000
    assert [i.record.created_at for i in first] == sorted(i.record.created_at for i in first)
    for item in first:
        if item.record.status is Status.PENDING:
            assert item.history == [] and len(item.inbox) == 1
        else:
            assert MIN_HISTORY <= len(item.history) <= MAX_HISTORY and item.inbox == []
    completed = sum(i.record.status is Status.COMPLETED for i in first)
    assert 0.6 < completed / 2000 < 0.8


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_scale_lists_and_purges_through_the_client(storage: str, tmp_path: Path) -> None:
    finished = _run(
        "bench.scale", "--storage", storage, "--instances", "4000", "--purge", "300",
        "--purge-repeats", "2", "--repeats", "2", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout + finished.stderr
    [result_file] = tmp_path.glob(f"scale-{storage}-*.json")
    report = json.loads(result_file.read_text())
    assert report["tally"]["instances"] == 4000
    assert [purge["purged"] for purge in report["results"]["purges"]] == [300, 300]
    pages = {entry["filter"]: entry for entry in report["results"]["pages"]}
    assert pages["no filter"]["matches"] == 4000 and pages["no filter"]["deep_page"]["depth"] == 2000
    assert all(entry["first_page"]["median_ms"] > 0 for entry in pages.values())
    assert "targets:" in finished.stdout


def test_postgres_runner_runs_duratask_workers_and_dbos_on_one_durable_server(tmp_path: Path) -> None:
    finished = _run(
        "bench.postgres", "--systems", "pg-duratask-2w,pg-dbos", "--repeat", "1", "--n", "5",
        "--latency-n", "3", "--latency-warmup", "1", "--timeout", "180", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout + finished.stderr
    [result_file] = tmp_path.glob("bench-*.json")
    report = json.loads(result_file.read_text())
    assert report["postgres"]["durable"] is True
    assert report["postgres"]["server_settings"]["fsync"] == "on"
    for system in ("pg-duratask-2w", "pg-dbos"):
        assert report["medians"][system]["chain3"]["throughput_per_s"] > 0
        assert report["medians"][system]["latency"]["p50_ms"] > 0
        assert report["medians"][system]["chain3"]["server_cpu_ms_per_instance"] > 0
    assert report["medians"]["pg-duratask-2w"]["chain3"]["worker_processes"] == 2
    assert "duratask 1 worker process / DBOS: -" in finished.stdout  # 1w not run: no ratio, no crash
