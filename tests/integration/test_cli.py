"""The ``duratask`` command line, run as users run it: separate processes sharing one SQLite file.

A worker process runs the orchestrations of a small module written into ``tmp_path``; every CLI
call is its own process. Checks stdout, stderr and exit codes, including the ugly paths.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from duratask import OrchestrationRuntimeStatus, SyncDurableTaskClient

TASKS_MODULE = '''
from duratask import Worker

# The connection string here must lose to `duratask worker --connection ...`.
worker = Worker("sqlite:///not-this-one.db")


@worker.activity
def say_hello(ctx, name: str) -> str:
    return f"Hello {name}!"


@worker.orchestrator
async def hello(ctx, name):
    return await ctx.call_activity(say_hello, name)


@worker.orchestrator
async def approval(ctx, _):
    ctx.set_custom_status("waiting")
    answer = await ctx.wait_for_external_event("approve")
    return {"approved": answer}


@worker.orchestrator
async def fails(ctx, _):
    raise ValueError("boom at step 1")


def make_worker():
    made = Worker()
    made.add_orchestrator(hello)
    made.add_activity(say_hello)
    return made
'''

BIN = Path(sys.executable).with_name("duratask")
COMMAND = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "duratask"]


@dataclass
class Cli:
    """Runs ``duratask`` in ``cwd`` with a clean environment (no inherited connection string)."""

    cwd: Path
    connection: str

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DURATASK_CONNECTION_STRING", "COLUMNS")}
        env.update(extra or {})
        return env

    def run(self, *args: str, connect: bool = True, env: dict[str, str] | None = None,
            command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [*(command or COMMAND), *args, *(["-c", self.connection] if connect else [])]
        return subprocess.run(
            argv, check=False, cwd=self.cwd, env=self.env(env), capture_output=True, text=True, timeout=60
        )

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
        return result.stdout

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args, "--json"))


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int, *fragments: str) -> None:
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    (tmp_path / "tasks.py").write_text(TASKS_MODULE)
    return Cli(tmp_path, f"sqlite:///{tmp_path / 'cli.db'}")


def start_worker(cli: Cli, target: str = "tasks:worker", *extra: str) -> subprocess.Popen[str]:
    with open(cli.cwd / "worker.log", "a") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*COMMAND, "worker", target, "-c", cli.connection, *extra],
            cwd=cli.cwd,
            env=cli.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: teardown can kill it and anything it spawned
        )


def stop_worker(process: subprocess.Popen[str]) -> int:
    """SIGTERM (the worker's clean shutdown), then SIGKILL of its whole group if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    return process.returncode


@pytest.fixture
def worker(cli: Cli) -> Iterator[subprocess.Popen[str]]:
    process = start_worker(cli, "tasks:worker", "--max-orchestrations", "10", "--max-activities", "4")
    try:
        yield process
    finally:
        code = stop_worker(process)
    assert code == 0, (cli.cwd / "worker.log").read_text()


def wait_for_status(cli: Cli, instance_id: str, status: OrchestrationRuntimeStatus, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with SyncDurableTaskClient(cli.connection) as client:
        while time.monotonic() < deadline:
            meta = client.get_instance(instance_id)
            if meta is not None and meta.runtime_status is status:
                return
            time.sleep(0.05)
    raise AssertionError(f"{instance_id} did not reach {status.name}")


# --- happy paths, with a worker process ---------------------------------------------------------


def test_start_wait_get_list_history(cli: Cli, worker: subprocess.Popen[str]) -> None:
    table = cli.ok("start", "hello", "--input", '"Tokyo"', "--id", "greet-1", "--wait", "--timeout", "30")
    assert "COMPLETED" in table and '"Hello Tokyo!"' in table and "greet-1" in table

    document = cli.json("start", "hello", "--input", '"Paris"', "--wait", "--timeout", "30")
    assert isinstance(document, dict)
    assert document["runtime_status"] == "COMPLETED"
    assert document["input"] == "Paris" and document["output"] == "Hello Paris!"
    second = document["instance_id"]

    got = cli.json("get", "greet-1")
    assert isinstance(got, dict)
    assert got["name"] == "hello" and got["output"] == "Hello Tokyo!" and got["failure_details"] is None

    listed = cli.json("list", "--status", "completed", "--prefix", "greet-")
    assert isinstance(listed, dict)
    assert [i["instance_id"] for i in listed["instances"]] == ["greet-1"]
    assert listed["continuation_token"] is None
    table = cli.ok("list")
    assert "greet-1" in table and second in table and "2 instances" in table

    history = cli.json("history", "greet-1")
    assert isinstance(history, dict)
    events = history["events"]
    types = [e["type"] for e in events]
    assert "ExecutionStarted" in types and "TaskScheduled" in types and "TaskCompleted" in types
    assert types.count("ExecutionCompleted") == 1
    assert [e["seq"] for e in events] == list(range(len(events)))
    completed = next(e for e in events if e["type"] == "ExecutionCompleted")
    assert completed["status"] == "COMPLETED" and json.loads(completed["result"]) == "Hello Tokyo!"
    table = cli.ok("history", "greet-1")
    assert "TaskScheduled" in table and "name=say_hello" in table and "History of greet-1" in table

    # The worker used --connection, not the string its module was built with.
    assert not (cli.cwd / "not-this-one.db").exists()


def test_suspend_raise_resume(cli: Cli, worker: subprocess.Popen[str]) -> None:
    instance_id = cli.ok("start", "approval").strip()
    assert len(instance_id.splitlines()) == 1 and instance_id  # plain mode prints the id alone
    wait_for_status(cli, instance_id, OrchestrationRuntimeStatus.RUNNING)

    assert "Suspension" in cli.ok("suspend", instance_id, "--reason", "hold on")
    wait_for_status(cli, instance_id, OrchestrationRuntimeStatus.SUSPENDED)
    raised = cli.json("raise", instance_id, "approve", "--data", "true")
    assert raised == {"instance_id": instance_id, "event_name": "approve"}
    time.sleep(0.5)  # the event must wait while suspended
    assert cli.json("get", instance_id)["runtime_status"] == "SUSPENDED"  # type: ignore[index]

    cli.ok("resume", instance_id, "--reason", "go")
    wait_for_status(cli, instance_id, OrchestrationRuntimeStatus.COMPLETED)
    got = cli.json("get", instance_id)
    assert isinstance(got, dict)
    assert got["output"] == {"approved": True} and got["custom_status"] == "waiting"

    events = cli.json("history", instance_id)["events"]  # type: ignore[index]
    reasons = {e["type"]: e.get("input") for e in events if e["type"] in ("ExecutionSuspended", "ExecutionResumed")}
    assert reasons == {"ExecutionSuspended": "hold on", "ExecutionResumed": "go"}
    assert any(e["type"] == "EventRaised" and e["name"] == "approve" for e in events)


def test_terminate_then_purge(cli: Cli, worker: subprocess.Popen[str]) -> None:
    doomed = cli.ok("start", "approval", "--id", "doomed").strip()
    kept = cli.ok("start", "approval", "--id", "kept").strip()
    wait_for_status(cli, kept, OrchestrationRuntimeStatus.RUNNING)

    # Purging a running instance is refused, and says why.
    assert_one_line_error(cli.run("purge", kept), 1, "terminate it first")

    stopped = cli.json("terminate", doomed, "--output", '"stopped by test"', "--wait", "--timeout", "30")
    assert stopped == {"instance_id": doomed, "runtime_status": "TERMINATED"}
    got = cli.json("get", doomed)
    assert isinstance(got, dict)
    assert got["runtime_status"] == "TERMINATED" and got["output"] == "stopped by test"
    # Terminating a finished instance is a no-op, not an error.
    assert "doomed" in cli.ok("terminate", doomed)

    assert cli.json("purge", doomed) == {"purged_instance_count": 1}
    assert_one_line_error(cli.run("get", doomed), 3, "not found")

    cli.ok("terminate", kept, "--wait", "--timeout", "30")
    assert "Purged 1 instance." in cli.ok("purge", "--status", "terminated,completed")
    assert cli.json("list") == {"instances": [], "continuation_token": None}


def test_failed_instance_under_wait_exits_1_with_the_reason(cli: Cli, worker: subprocess.Popen[str]) -> None:
    result = cli.run("start", "fails", "--wait", "--timeout", "30", "--json")
    assert_one_line_error(result, 1, "FAILED", "boom at step 1")
    document = json.loads(result.stdout)
    assert document["runtime_status"] == "FAILED"
    assert document["failure_details"]["error_type"] == "ValueError"
    assert "boom at step 1" in document["failure_details"]["error_message"]

    table = cli.run("get", document["instance_id"])
    assert table.returncode == 0 and "ValueError: boom at step 1" in table.stdout


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["get", "no-such-id"], 3, "not found"),
        (["raise", "no-such-id", "approve"], 3, "not found"),
        (["terminate", "no-such-id"], 3, "not found"),
        (["start", "hello", "--input", "Tokyo"], 2, "--input is not valid JSON"),
        (["list", "--status", "runing"], 2, "unknown runtime status"),
        (["start"], 2, "Missing argument"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(cli: Cli, args: list[str], code: int, fragment: str) -> None:
    assert_one_line_error(cli.run(*args), code, fragment)


@pytest.mark.parametrize(
    ("connection", "fragment"),
    [
        ("mysql://localhost/db", "unknown connection string scheme"),
        ("Endpoint=http://localhost:8080;TaskHub=default", "Authentication"),
    ],
)
def test_malformed_connection_string(cli: Cli, connection: str, fragment: str) -> None:
    result = cli.run("list", "-c", connection, connect=False)
    assert_one_line_error(result, 2, fragment)
    result = cli.run("start", "hello", connect=False, env={"DURATASK_CONNECTION_STRING": connection})
    assert_one_line_error(result, 2, fragment)


def test_unopenable_database_is_one_line(cli: Cli) -> None:
    result = cli.run("list", "-c", f"sqlite:///{cli.cwd / 'missing-dir' / 'x.db'}", connect=False)
    assert_one_line_error(result, 1)


# --- where the connection comes from; entry points ----------------------------------------------------


def test_connection_from_environment_then_default(cli: Cli) -> None:
    env_db = cli.cwd / "from-env.db"
    result = cli.run("start", "hello", "--id", "via-env", connect=False,
                     env={"DURATASK_CONNECTION_STRING": f"sqlite:///{env_db}"})
    assert result.returncode == 0 and result.stdout.strip() == "via-env"
    assert env_db.exists()

    result = cli.run("start", "hello", "--id", "via-default", "--json", connect=False)
    assert json.loads(result.stdout) == {"instance_id": "via-default"}
    assert (cli.cwd / "duratask.db").exists()
    assert cli.run("get", "via-default", connect=False).returncode == 0
    assert cli.run("get", "via-env", connect=False).returncode == 3


def test_python_dash_m_entry_points(cli: Cli) -> None:
    as_package = cli.run("get", "nothing", command=[sys.executable, "-m", "duratask"])
    assert_one_line_error(as_package, 3, "not found")
    as_module = cli.run("--help", connect=False, command=[sys.executable, "-m", "duratask.cli"])
    assert as_module.returncode == 0 and "purge" in as_module.stdout


# --- the worker command -----------------------------------------------------------------------------


def test_worker_from_a_factory(cli: Cli) -> None:
    process = start_worker(cli, "tasks:make_worker")
    try:
        document = cli.json("start", "hello", "--input", '"Oslo"', "--wait", "--timeout", "30")
        assert document["output"] == "Hello Oslo!"  # type: ignore[index]
    finally:
        assert stop_worker(process) == 0
    banner = (cli.cwd / "worker.log").read_text()
    assert "orchestrators hello" in banner and "activities say_hello" in banner


def test_worker_bad_targets(cli: Cli) -> None:
    (cli.cwd / "broken.py").write_text(textwrap.dedent("""
        import math
        VALUE = 1 / 0
    """))
    (cli.cwd / "not_a_worker.py").write_text("thing = 42\ndef factory():\n    return 'nope'\n")
    cases = [
        ("tasks", 2, "MODULE:ATTRIBUTE"),
        ("no_such_module:worker", 2, "cannot import module 'no_such_module'"),
        ("tasks:nothing", 2, "has no attribute 'nothing'"),
        ("not_a_worker:thing", 2, "not a duratask.Worker"),
        ("not_a_worker:factory", 2, "returned a str"),
        ("broken:worker", 1, "ZeroDivisionError"),
    ]
    for target, code, fragment in cases:
        assert_one_line_error(cli.run("worker", target), code, fragment)
    # A connection string that cannot work stops the worker before it starts.
    assert_one_line_error(cli.run("worker", "tasks:worker", "-c", "bogus://x", connect=False), 2, "bogus")


# --- serve: the CLI against its own scheduler server, over gRPC --------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_listening(port: int, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve exited early"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_serve_then_manage_instances_over_endpoint(cli: Cli) -> None:
    port = free_port()
    with open(cli.cwd / "serve.log", "a") as log:
        server = subprocess.Popen(
            [*COMMAND, "serve", "--storage", cli.connection, "--port", str(port), "--no-dashboard",
             "--auth-token", "s3cret"],
            cwd=cli.cwd, env=cli.env(), stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
    endpoint = f"Endpoint=http://127.0.0.1:{port};TaskHub=default;Authentication=Token;Token=s3cret"
    remote = Cli(cli.cwd, endpoint)
    try:
        wait_until_listening(port, server)
        worker = start_worker(remote)
        try:
            document = remote.json("start", "hello", "--input", '"gRPC"', "--id", "over-grpc", "--wait",
                                   "--timeout", "30")
            assert document["output"] == "Hello gRPC!"  # type: ignore[index]
        finally:
            assert stop_worker(worker) == 0
        assert_one_line_error(remote.run("get", "nowhere"), 3, "not found")
        no_token = endpoint.replace("Authentication=Token;Token=s3cret", "Authentication=None")
        assert_one_line_error(remote.run("get", "over-grpc", "-c", no_token, connect=False), 1)
        other_hub = endpoint.replace("TaskHub=default", "TaskHub=elsewhere")
        assert_one_line_error(remote.run("list", "-c", other_hub, connect=False), 1, "elsewhere")
        # The server kept its state in the SQLite file: the embedded CLI reads the same instance.
        assert cli.json("get", "over-grpc")["output"] == "Hello gRPC!"  # type: ignore[index]
    finally:
        assert stop_worker(server) == 0, (cli.cwd / "serve.log").read_text()
    assert "s3cret" not in (cli.cwd / "worker.log").read_text()  # the banner masks the token
