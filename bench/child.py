"""Run one workload of one system in this (fresh) process and write its result as JSON.

Invoked by bench/run.py as `python -m bench.child SYSTEM WORKLOAD PARAMS_JSON OUT_PATH`.
Exit codes: 0 ok, 1 error, 3 system not available.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.driver import Params, SystemUnavailable
from bench.systems import SYSTEMS
from bench.workloads import WORKLOADS, Metrics

EXIT_OK, EXIT_ERROR, EXIT_UNAVAILABLE = 0, 1, 3


async def run_workload(system: str, workload: str, params: Params) -> Metrics:
    open_driver = SYSTEMS[system].open_driver()
    async with open_driver(params) as driver:
        metrics = await WORKLOADS[workload](driver, params)
        # Figures only some systems can give (the gRPC path: CPU of the server process apart).
        extra = getattr(driver, "extra_metrics", None)
        return {**metrics, **(extra() if extra is not None else {})}


def _outcome(system: str, workload: str, params: Params) -> tuple[int, dict[str, Any]]:
    try:
        metrics = asyncio.run(run_workload(system, workload, params))
    except SystemUnavailable as exc:
        return EXIT_UNAVAILABLE, {"status": "unavailable", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - every failure is a result to report, not a crash
        return EXIT_ERROR, {
            "status": "error",
            "reason": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    return EXIT_OK, {"status": "ok", "metrics": metrics}


def main(argv: list[str]) -> int:
    system, workload, params_json, out_path = argv
    # Each run gets its own empty directory, and works inside it so relative
    # connection strings (sqlite:///duratask.db) land there.
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{system}-{workload}-"))
    params = Params.from_json({**json.loads(params_json), "workdir": str(workdir)})
    os.chdir(workdir)
    began = time.perf_counter()
    try:
        code, result = _outcome(system, workload, params)
    finally:
        os.chdir("/")
        shutil.rmtree(workdir, ignore_errors=True)
    result.update(system=system, workload=workload, wall_s=time.perf_counter() - began)
    Path(out_path).write_text(json.dumps(result, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
