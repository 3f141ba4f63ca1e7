"""The gRPC-path systems for real: each server in a process of its own, tiny workloads, CPU apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = ("grpc-official-duratask", "grpc-official-inmemory", "grpc-duratask-sdk")


def test_every_grpc_system_runs_and_reports_its_server_cpu(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "bench",
        "--systems", ",".join(SYSTEMS),
        "--workloads", "chain3,fanout",
        "--repeat", "1", "--n", "5", "--fanout-n", "10", "--timeout", "120",
        "--results-dir", str(tmp_path),
    ]  # fmt: skip
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400, check=False
    )
    assert finished.returncode == 0, finished.stderr
    [result_file] = tmp_path.glob("bench-*.json")
    report = json.loads(result_file.read_text())
    assert report["failures"] == {} and report["unavailable"] == {}, finished.stdout
    for system in SYSTEMS:
        chain3 = report["medians"][system]["chain3"]
        assert chain3["throughput_per_s"] > 0
        # Six instances (the warm-up one included) cost the server some CPU, measured apart.
        assert chain3["server_cpu_ms_per_instance"] > 0 and chain3["sdk_cpu_ms_per_instance"] > 0
        assert report["medians"][system]["fanout"]["elapsed_s"] > 0
