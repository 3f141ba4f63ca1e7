"""The whole harness, for real: fresh subprocesses, peers on tiny workloads, JSON written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_reports_peers_and_an_unavailable_system(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "bench",
        "--systems", "duratask,dbos,durabletask",
        "--workloads", "chain3,fanout",
        "--repeat", "1", "--n", "5", "--fanout-n", "10", "--timeout", "120",
        "--results-dir", str(tmp_path),
    ]  # fmt: skip
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert finished.returncode == 0, finished.stderr
    [result_file] = tmp_path.glob("bench-*.json")
    report = json.loads(result_file.read_text())
    for peer in ("dbos", "durabletask"):
        assert report["medians"][peer]["chain3"]["throughput_per_s"] > 0
        assert report["medians"][peer]["fanout"]["elapsed_s"] > 0
    if "duratask" in report["unavailable"]:
        # Until the SDK lands the harness says so once and does not retry it.
        assert "not available" in finished.stdout
        assert [run["workload"] for run in report["runs"] if run["system"] == "duratask"] == ["chain3"]
    else:
        assert report["medians"]["duratask"]["chain3"]["throughput_per_s"] > 0


def test_unknown_system_is_refused() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "bench", "--systems", "temporal"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert finished.returncode == 2
    assert "unknown: temporal" in finished.stderr
