"""The ``duratask`` command line in-process (typer's CliRunner): fast checks of output and failures.

Real SQLite files in ``tmp_path``; where instances must finish, a real Worker runs in the test's
own event loop before the CLI is invoked.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from duratask import ActivityContext, DurableTaskClient, OrchestrationContext, Worker
from duratask.cli import app, main
from duratask.cli.errors import CliError, describe, exit_code_for
from duratask.cli.processes import _call_entry_point, load_worker, redact
from duratask.errors import InstanceStateError, OrchestrationNotFoundError

runner = CliRunner()


def say_hello(ctx: ActivityContext, name: str) -> str:
    return f"Hello {name}!"


async def greet(ctx: OrchestrationContext, name: str) -> str:
    return await ctx.call_activity(say_hello, name)


async def explode(ctx: OrchestrationContext, _: Any) -> None:
    raise RuntimeError("kaboom")


@pytest.fixture
def conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("DURATASK_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("DURATASK_DEBUG", raising=False)
    return f"sqlite:///{tmp_path / 'inproc.db'}"


def invoke(conn: str, *args: str, input: str | None = None) -> Result:
    return runner.invoke(app, [*args, "-c", conn], input=input)


def ok(conn: str, *args: str, input: str | None = None) -> str:
    result = invoke(conn, *args, input=input)
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def as_json(conn: str, *args: str) -> Any:
    return json.loads(ok(conn, *args, "--json"))


def one_line_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def run_instances(conn: str, *starts: tuple[str, Any, str]) -> None:
    """Run each (orchestrator, input, id) to its end with a real worker in this process."""

    async def go() -> None:
        worker = Worker(conn)
        worker.add_orchestrator(greet)
        worker.add_orchestrator(explode)
        worker.add_activity(say_hello)
        async with worker, DurableTaskClient(conn) as client:
            for name, value, instance_id in starts:
                await client.schedule_new_orchestration_instance(name, value, instance_id=instance_id)
            for _, _, instance_id in starts:
                await client.wait_for_instance_completion(instance_id, timeout=20)

    asyncio.run(go())


# --- surface ------------------------------------------------------------------------------------


def test_help_names_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "worker", "dashboard", "start", "get", "list", "history", "raise",
                    "terminate", "suspend", "resume", "purge"):
        assert command in result.stdout
    for command in ("start", "list", "purge", "worker", "serve", "dashboard"):
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "--connection" in sub.stdout


# --- instances without a worker: they stay PENDING -------------------------------------------------


def test_start_get_and_list_pending(conn: str) -> None:
    assert ok(conn, "start", "greet", "--id", "a-1", "--input", '{"n": 1, "tags": ["x"]}') == "a-1\n"
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert as_json(conn, "start", "greet", "--id", "a-2", "--start-at", later) == {"instance_id": "a-2"}
    ok(conn, "start", "other", "--id", "b-1")

    got = as_json(conn, "get", "a-1")
    assert got["runtime_status"] == "PENDING" and got["input"] == {"n": 1, "tags": ["x"]}
    assert got["output"] is None and got["name"] == "greet"
    table = ok(conn, "get", "a-1")
    assert "PENDING" in table and '"n": 1' in table

    pending = as_json(conn, "list", "--status", "PENDING", "--prefix", "a-")
    assert [i["instance_id"] for i in pending["instances"]] == ["a-1", "a-2"]
    assert as_json(conn, "list", "--status", "running")["instances"] == []
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")  # no zone: UTC
    assert as_json(conn, "list", "--created-from", future)["instances"] == []
    assert len(as_json(conn, "list", "--created-to", future)["instances"]) == 3


def test_list_pages_tokens_and_all(conn: str) -> None:
    for n in range(5):
        ok(conn, "start", "greet", "--id", f"p-{n}")
    first = as_json(conn, "list", "--page-size", "2")
    assert [i["instance_id"] for i in first["instances"]] == ["p-0", "p-1"]
    token = first["continuation_token"]
    assert token
    table = ok(conn, "list", "--page-size", "2")
    assert "2 instances; more with --all or --continuation-token" in table
    second = as_json(conn, "list", "--page-size", "2", "--continuation-token", token)
    assert [i["instance_id"] for i in second["instances"]] == ["p-2", "p-3"]
    everything = as_json(conn, "list", "--page-size", "2", "--all")
    assert [i["instance_id"] for i in everything["instances"]] == [f"p-{n}" for n in range(5)]
    assert everything["continuation_token"] is None
    assert "5 instances" in ok(conn, "list", "--all", "--page-size", "2")
    one_line_error(invoke(conn, "list", "--continuation-token", "garbage"), 2, "continuation token")


def test_empty_hub(conn: str) -> None:
    assert "0 instances" in ok(conn, "list")
    assert as_json(conn, "list") == {"instances": [], "continuation_token": None}


def test_user_text_is_printed_literally_not_as_markup(conn: str) -> None:
    ok(conn, "start", "greet", "--id", "[bold]x[/bold]", "--input", '"[red]alert[/red]"')
    table = ok(conn, "get", "[bold]x[/bold]")
    assert "[bold]x[/bold]" in table and '"[red]alert[/red]"' in table
    assert "[bold]x[/bold]" in ok(conn, "list")
    # (history of a finished instance with markup in its payloads: test_history_and_purge_...)


def test_json_inputs_from_file_and_stdin(conn: str, tmp_path: Path) -> None:
    (tmp_path / "input.json").write_text('{"from": "file"}')
    ok(conn, "start", "greet", "--id", "f", "--input", f"@{tmp_path / 'input.json'}")
    ok(conn, "start", "greet", "--id", "s", "--input", "-", input='["from", "stdin"]')
    assert as_json(conn, "get", "f")["input"] == {"from": "file"}
    assert as_json(conn, "get", "s")["input"] == ["from", "stdin"]
    one_line_error(invoke(conn, "start", "greet", "--input", "@/no/such/file.json"), 2, "cannot read")
    one_line_error(invoke(conn, "start", "greet", "--input", "NaN"), 2, "not valid JSON")
    one_line_error(invoke(conn, "start", "greet", "--input", "{bad"), 2, "--input is not valid JSON")
    one_line_error(invoke(conn, "terminate", "f", "--output", "nope"), 2, "--output is not valid JSON")
    one_line_error(invoke(conn, "start", "greet", "--start-at", "tomorrow"), 2, "--start-at")


def test_state_errors(conn: str) -> None:
    ok(conn, "start", "greet", "--id", "dup")
    one_line_error(invoke(conn, "start", "greet", "--id", "dup"), 1, "already exists")
    one_line_error(invoke(conn, "start", "greet", "--id", "dup", "--wait", "--timeout", "0.2"), 1, "already exists")
    ok(conn, "start", "greet", "--id", "slow")
    one_line_error(invoke(conn, "get", "ghost"), 3, "'ghost' not found")
    one_line_error(invoke(conn, "suspend", "ghost"), 3, "not found")
    one_line_error(invoke(conn, "resume", "ghost"), 3, "not found")
    one_line_error(invoke(conn, "purge", "ghost"), 3, "not found")
    one_line_error(invoke(conn, "raise", "dup", ""), 2, "event name")


def test_wait_times_out_with_exit_code_4(conn: str) -> None:
    result = invoke(conn, "start", "greet", "--id", "nobody-runs-me", "--wait", "--timeout", "0.3")
    one_line_error(result, 4, "nobody-runs-me")
    assert as_json(conn, "get", "nobody-runs-me")["runtime_status"] == "PENDING"


# --- finished instances (a real worker ran them) ------------------------------------------------------


def test_history_and_purge_of_finished_instances(conn: str) -> None:
    run_instances(conn, ("greet", "[b]Rome", "g-1"), ("greet", "Lima", "g-2"), ("explode", None, "x-1"))

    history = ok(conn, "history", "g-1")
    assert "TaskScheduled" in history and "name=say_hello" in history and "task=" in history
    assert 'result="Hello [b]Rome!"' in history and 'input="[b]Rome"' in history
    failed = ok(conn, "history", "x-1")
    assert "failure=RuntimeError: kaboom" in failed and "status=FAILED" in failed
    detail = ok(conn, "get", "x-1")
    assert "FAILED" in detail and "RuntimeError: kaboom" in detail and "Traceback" in detail

    one_line_error(invoke(conn, "raise", "g-1", "late"), 1, "COMPLETED")
    one_line_error(invoke(conn, "suspend", "g-1"), 1, "COMPLETED")

    # Filter form: nothing created before yesterday; then every FAILED one; then the rest.
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert as_json(conn, "purge", "--created-to", yesterday) == {"purged_instance_count": 0}
    assert as_json(conn, "purge", "--status", "failed") == {"purged_instance_count": 1}
    assert "Purged 1 instance." in ok(conn, "purge", "g-1", "--no-recursive")
    assert "Purged 1 instance." in ok(conn, "purge", "--status", "completed", "--created-from", yesterday)
    assert as_json(conn, "list")["instances"] == []


def test_purge_needs_an_id_or_filters_not_both(conn: str) -> None:
    one_line_error(invoke(conn, "purge"), 2, "give an instance id")
    one_line_error(invoke(conn, "purge", "some-id", "--status", "completed"), 2, "not both")


# --- worker target loading -----------------------------------------------------------------------------


def test_load_worker_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cli_targets_mod.py").write_text(
        "from duratask import Worker\n"
        "class Holder:\n"
        "    worker = Worker('memory://')\n"
        "def factory():\n"
        "    return Holder.worker\n"
        "number = 3\n"
        "def bad_factory():\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # restored after the test
    holder = load_worker("cli_targets_mod:Holder.worker", str(tmp_path))
    assert isinstance(holder, Worker)
    assert load_worker("cli_targets_mod:factory", str(tmp_path)) is holder
    for target, message in [
        ("cli_targets_mod:number", "is a int"),
        ("cli_targets_mod:bad_factory", "returned a int"),
        ("cli_targets_mod:Holder.nothing", "no attribute"),
        (":worker", "MODULE:ATTRIBUTE"),
        ("cli_targets_mod:", "MODULE:ATTRIBUTE"),
    ]:
        with pytest.raises(CliError, match=message) as caught:
            load_worker(target, str(tmp_path))
        assert caught.value.exit_code == 2
    sys.modules.pop("cli_targets_mod", None)


def test_worker_rejects_a_bad_connection_before_running(tmp_path: Path, conn: str) -> None:
    (tmp_path / "cli_bad_conn_mod.py").write_text("from duratask import Worker\nworker = Worker()\n")
    result = runner.invoke(app, ["worker", "cli_bad_conn_mod:worker", "--app-dir", str(tmp_path), "-c", "nope://"])
    one_line_error(result, 2, "nope")
    sys.modules.pop("cli_bad_conn_mod", None)
    result = runner.invoke(app, ["worker", "x:y", "--log-level", "chatty"])
    one_line_error(result, 2, "--log-level")


# --- serve and dashboard entry points --------------------------------------------------------------------


def test_entry_points_are_called_with_the_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cli_entry_mod.py").write_text(
        "import json\n"
        "def sync_entry(*args, **kwargs):\n"
        "    print(json.dumps([args, kwargs]))\n"
        "async def async_entry(*args, **kwargs):\n"
        "    print(json.dumps([args, kwargs]))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _call_entry_point("cli_entry_mod", "sync_entry", "thing", "a", port=1)
    assert json.loads(capsys.readouterr().out) == [["a"], {"port": 1}]
    _call_entry_point("cli_entry_mod", "async_entry", "thing", port=2)  # awaited on its own loop
    assert json.loads(capsys.readouterr().out) == [[], {"port": 2}]
    with pytest.raises(CliError, match="thing is not available"):
        _call_entry_point("cli_entry_mod", "missing", "thing")
    with pytest.raises(CliError, match="other is not available"):
        _call_entry_point("cli_entry_mod_absent", "serve", "other")
    sys.modules.pop("cli_entry_mod", None)


def test_serve_needs_embedded_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DURATASK_CONNECTION_STRING", raising=False)
    result = runner.invoke(app, ["serve", "--storage", "Endpoint=http://localhost:1;TaskHub=x;Authentication=None"])
    one_line_error(result, 2, "sqlite://")
    result = runner.invoke(app, ["serve", "--storage", "bogus://"])
    one_line_error(result, 2, "bogus")
    result = runner.invoke(app, ["dashboard", "-c", "bogus://"])
    one_line_error(result, 2, "bogus")
    result = runner.invoke(app, ["serve", "--storage", "memory://", "--log-level", "loud"])
    one_line_error(result, 2, "--log-level")


# --- main(): usage errors on one line, debug tracebacks -------------------------------------------------


def test_main_reports_usage_errors_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, fragment in [(["start"], "Missing argument"), (["nope"], "No such command"),
                           (["list", "--page-size", "0"], "--page-size"), (["get", "x", "--bogus"], "--bogus")]:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("Error: ") and fragment in err, err
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "purge" in capsys.readouterr().out


def test_main_runs_commands(conn: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["start", "greet", "--id", "m-1", "-c", conn])
    assert exited.value.code == 0 and capsys.readouterr().out == "m-1\n"
    with pytest.raises(SystemExit) as exited:
        main(["get", "missing", "-c", conn])
    assert exited.value.code == 3


def test_debug_mode_adds_the_traceback(conn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURATASK_DEBUG", "1")
    result = invoke(conn, "history", "ghost")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1] == "Error: orchestration instance 'ghost' not found"


def test_error_descriptions_and_codes() -> None:
    assert exit_code_for(OrchestrationNotFoundError("x")) == 3
    assert exit_code_for(TimeoutError()) == 4 and describe(TimeoutError()) == "timed out"
    assert exit_code_for(InstanceStateError("no")) == 1
    assert exit_code_for(ValueError("bad")) == 2
    unexpected = describe(RuntimeError("line one\nline two"))
    assert unexpected.startswith("unexpected RuntimeError: line one line two") and "DURATASK_DEBUG" in unexpected
    assert exit_code_for(RuntimeError()) == 1


def test_redact_hides_secrets() -> None:
    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact("sqlite:///a.db") == "sqlite:///a.db"
    assert redact("Endpoint=http://h:1;TaskHub=t;Authentication=Token;Token=abc") == (
        "Endpoint=http://h:1;TaskHub=t;Authentication=Token;Token=***"
    )
