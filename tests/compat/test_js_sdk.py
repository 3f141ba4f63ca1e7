"""The official JavaScript SDK (@microsoft/durabletask-js 0.4.0, pinned in tests/compat/js) against
`duratask serve`: chain, fan-out, external event, timer, query with paging.

Needs node and `npm ci --prefix tests/compat/js` (run by .ci/run). Without them the test is
skipped, unless DURATASK_REQUIRE_JS=1 makes that a failure (CI sets it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.compat.serverlib import ServerThread
from tests.pgserver import session_server

JS_DIR = Path(__file__).parent / "js"
SCENARIOS = ("chain", "fanOut", "event", "timer", "query")


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_DIR / "node_modules" / "@microsoft" / "durabletask-js").is_dir():
        return "the JS SDK is not installed: npm ci --prefix tests/compat/js"
    return None


@pytest.fixture(scope="module", params=("sqlite", "postgresql"))
def js_results(request: Any, tmp_path_factory: Any) -> dict[str, dict[str, Any]]:
    """The scenarios' outcomes against `duratask serve` on a SQLite file, then on PostgreSQL."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("DURATASK_REQUIRE_JS") == "1" or os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    if request.param == "postgresql":
        storage = session_server().create_database()
    else:
        storage = f"sqlite:///{tmp_path_factory.mktemp('js') / 'serve.db'}"
    server = ServerThread(storage=storage)
    try:
        run = subprocess.run(
            ["node", str(JS_DIR / "scenarios.js"), server.address],
            check=False,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=JS_DIR,
        )
    finally:
        server.stop()
    results = {}
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["scenario"]] = record
    if "setup" in results or not results:
        pytest.fail(f"the JS scenarios did not run (exit {run.returncode}):\n{run.stdout}\n{run.stderr}")
    return results


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_js_sdk(js_results: dict[str, dict[str, Any]], scenario: str) -> None:
    result = js_results.get(scenario)
    assert result is not None, f"scenario {scenario} did not report"
    assert result["ok"], result.get("error")
