"""The dashboard's JSON API: answers, filters and paging, and the errors of bad requests.

Most tests drive ``create_app`` through starlette's TestClient (its lifespan opens the client on a
real SQLite file); instances are arranged with the blocking client on the same file. The last ones
run the real entry points: ``run_dashboard`` and ``duratask serve --dashboard-port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from duratask import SyncDurableTaskClient, Worker
from duratask.dashboard import create_app, run_dashboard
from duratask.errors import ConnectionStringError

from .conftest import served
from .orchestrations import register_all

LATER = datetime.now(UTC) + timedelta(days=1)  # instances scheduled then stay PENDING: no worker needed


@pytest.fixture
def connection(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'api.db'}"


@pytest.fixture
def client(connection: str) -> Iterator[SyncDurableTaskClient]:
    with SyncDurableTaskClient(connection) as c:
        yield c


@pytest.fixture
def api(connection: str) -> Iterator[TestClient]:
    with TestClient(create_app(connection)) as test_client:
        yield test_client


def pending(client: SyncDurableTaskClient, instance_id: str, name: str = "wait_for_approval") -> str:
    return client.schedule_new_orchestration_instance(name, {"n": 1}, instance_id=instance_id, start_at=LATER)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["status"] == status
    assert error["message"]
    return error


def post(api: TestClient, path: str, body: Any = None) -> httpx.Response:
    return api.post(path, json={} if body is None else body)


# --- reading ----------------------------------------------------------------------------------------


def test_info_names_the_store_and_the_statuses(api: TestClient, tmp_path: Path) -> None:
    info = api.get("/api/info").json()
    assert info["connection"] == f"sqlite:///{tmp_path / 'api.db'} (task hub default)"
    assert info["statuses"][:2] == ["RUNNING", "COMPLETED"]
    assert set(info["actions"]) == {"raise-event", "terminate", "suspend", "resume", "purge"}


def test_info_never_shows_passwords_or_tokens() -> None:
    from duratask.dashboard.api import where

    assert where("postgresql://me:s3cret@db.example:5433/app?taskhub=x") == (
        "postgresql://db.example:5433/app (task hub x)"
    )
    shown = where("Endpoint=http://sched:8080;TaskHub=h;Authentication=Token;Token=s3cret")
    assert shown == "http://sched:8080 (task hub h)"


def test_one_instance_with_payloads_and_its_history(api: TestClient, client: SyncDurableTaskClient) -> None:
    pending(client, "one")
    body = api.get("/api/instances/one").json()
    assert body["instance_id"] == "one"
    assert body["name"] == "wait_for_approval"
    assert body["runtime_status"] == "PENDING"
    assert body["is_terminal"] is False
    assert body["serialized_input"] == '{"n":1}'
    assert body["serialized_output"] is None
    assert body["failure_details"] is None
    datetime.fromisoformat(body["created_at"])

    history = api.get("/api/history/one").json()
    assert history["instance_id"] == "one"
    assert history["events"] == []  # a pending instance has not run its first episode yet


def test_instance_ids_with_slashes_and_html_round_trip(
    api: TestClient, client: SyncDurableTaskClient
) -> None:
    for instance_id in ("orders/2024/7", "<b>x</b>&'\"", "spaces and ünïcode"):
        pending(client, instance_id)
        path = "/api/instances/" + quote(instance_id, safe="")
        response = api.get(path)
        assert response.status_code == 200, response.text
        assert response.json()["instance_id"] == instance_id
        assert api.get(path.replace("/api/instances/", "/api/history/")).status_code == 200


def test_list_filters_by_status_prefix_and_created_range(
    api: TestClient, client: SyncDurableTaskClient
) -> None:
    pending(client, "a-1")
    pending(client, "a-2")
    pending(client, "b-1")

    every = api.get("/api/instances").json()
    assert [i["instance_id"] for i in every["instances"]] == ["a-1", "a-2", "b-1"]
    assert every["continuation_token"] is None
    assert "serialized_input" not in every["instances"][0]  # the list stays small

    by_prefix = api.get("/api/instances", params={"prefix": "a-"}).json()
    assert [i["instance_id"] for i in by_prefix["instances"]] == ["a-1", "a-2"]

    statuses = api.get("/api/instances", params=[("status", "pending"), ("status", "RUNNING,FAILED")]).json()
    assert {i["runtime_status"] for i in statuses["instances"]} <= {"PENDING", "RUNNING", "FAILED"}
    assert api.get("/api/instances", params={"status": "COMPLETED"}).json()["instances"] == []

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert api.get("/api/instances", params={"created_from": future}).json()["instances"] == []
    naive_past = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert len(api.get("/api/instances", params={"created_from": naive_past}).json()["instances"]) == 3
    assert (
        len(api.get("/api/instances", params={"created_to": "2000-01-01T00:00:00Z"}).json()["instances"]) == 0
    )


def test_list_pages_with_continuation_tokens(api: TestClient, client: SyncDurableTaskClient) -> None:
    ids = [f"p-{n:02}" for n in range(7)]
    for instance_id in ids:
        pending(client, instance_id)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params = {"page_size": "3", "prefix": "p-", **({"continuation_token": token} if token else {})}
        page = api.get("/api/instances", params=params).json()
        seen += [i["instance_id"] for i in page["instances"]]
        pages += 1
        token = page["continuation_token"]
        if token is None:
            break
    assert seen == ids
    assert pages == 3


# --- actions ----------------------------------------------------------------------------------------


def test_actions_on_a_pending_instance(api: TestClient, client: SyncDurableTaskClient) -> None:
    pending(client, "act")
    accepted = post(api, "/api/raise-event/act", {"name": "approval", "data": {"ok": True}})
    assert accepted.status_code == 202
    assert accepted.json() == {"instance_id": "act", "action": "raise-event"}
    assert post(api, "/api/suspend/act", {"reason": "lunch"}).status_code == 202
    assert post(api, "/api/resume/act", {"reason": "back"}).status_code == 202
    assert post(api, "/api/terminate/act", {"output": "enough", "recursive": False}).status_code == 202


def test_purge_of_a_terminated_instance_then_it_is_gone(
    api: TestClient, client: SyncDurableTaskClient, tmp_path: Path
) -> None:
    # Termination is applied by a worker's episode; run one briefly on the same file.
    async def terminate_with_worker() -> None:
        async with register_all(Worker(f"sqlite:///{tmp_path / 'api.db'}", shutdown_timeout=1)):
            await asyncio.to_thread(client.terminate_instance, "gone", "bye")
            await asyncio.to_thread(client.wait_for_instance_completion, "gone", timeout=10)

    client.schedule_new_orchestration_instance("wait_for_approval", instance_id="gone")
    asyncio.run(terminate_with_worker())
    gone = api.get("/api/instances/gone").json()
    assert gone["runtime_status"] == "TERMINATED"
    assert gone["is_terminal"] is True
    assert gone["serialized_output"] == '"bye"'
    events = api.get("/api/history/gone").json()["events"]
    kinds = [event["kind"] for event in events]
    assert kinds[0] in ("ExecutionStarted", "OrchestratorStarted") and "ExecutionStarted" in kinds
    assert "ExecutionTerminated" in kinds and kinds[-1] == "ExecutionCompleted"
    assert events[kinds.index("ExecutionTerminated")]["details"]["input"] == '"bye"'
    assert events[-1]["details"]["status"] == "TERMINATED"  # by name, not the protocol's number
    assert min(event["offset_ms"] for event in events) == 0  # timed from the earliest event

    purged = post(api, "/api/purge/gone")
    assert purged.status_code == 200
    assert purged.json() == {"instance_id": "gone", "action": "purge", "purged_instance_count": 1}
    error_of(api.get("/api/instances/gone"), 404)
    error_of(post(api, "/api/purge/gone"), 404)


# --- bad requests -----------------------------------------------------------------------------------


def test_unknown_instance_is_404_everywhere(api: TestClient) -> None:
    error = error_of(api.get("/api/instances/nope"), 404)
    assert "nope" in error["message"]
    assert error_of(api.get("/api/history/nope"), 404)["type"] == "OrchestrationNotFoundError"
    for action in ("raise-event", "terminate", "suspend", "resume", "purge"):
        body = {"name": "x"} if action == "raise-event" else {}
        assert error_of(post(api, f"/api/{action}/nope", body), 404)["type"] == "OrchestrationNotFoundError"


def test_purge_of_an_unfinished_instance_is_409_and_keeps_it(
    api: TestClient, client: SyncDurableTaskClient
) -> None:
    pending(client, "busy")
    error = error_of(post(api, "/api/purge/busy"), 409)
    assert error["type"] == "InstanceStateError"
    assert "busy" in error["message"]
    assert api.get("/api/instances/busy").json()["runtime_status"] == "PENDING"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "Expected `object`"),
        (b'{"data": 1}', "missing required field `name`"),
        (b'{"name": 5}', "Expected `str`"),
        (b'{"name": "x", "nmae": "y"}', "unknown field `nmae`"),
        (b'{"name": "   "}', "must not be empty"),
    ],
)
def test_bad_raise_event_bodies_are_400(
    api: TestClient, client: SyncDurableTaskClient, body: bytes, needle: str
) -> None:
    pending(client, "w")
    response = api.post("/api/raise-event/w", content=body, headers={"content-type": "application/json"})
    error = error_of(response, 400)
    assert needle in error["message"]


def test_actions_need_a_json_content_type(api: TestClient, client: SyncDurableTaskClient) -> None:
    pending(client, "ct")
    # What a cross-site form could send: refused before anything happens.
    response = api.post("/api/terminate/ct", content=b"{}", headers={"content-type": "text/plain"})
    assert error_of(response, 415)["type"] == "UnsupportedMediaType"
    assert api.get("/api/instances/ct").json()["runtime_status"] == "PENDING"


def test_bad_bodies_of_other_actions(api: TestClient, client: SyncDurableTaskClient) -> None:
    pending(client, "o")
    error_of(post(api, "/api/terminate/o", {"recursive": "yes"}), 400)
    error_of(post(api, "/api/suspend/o", {"reason": 3}), 400)
    error_of(post(api, "/api/purge/o", {"everything": True}), 400)
    empty = api.post("/api/suspend/o", content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 202  # an empty body is every field's default


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"status": "sleeping"}, "unknown runtime status 'sleeping'"),
        ({"page_size": "0"}, "between 1 and 500"),
        ({"page_size": "1000"}, "between 1 and 500"),
        ({"page_size": "ten"}, "not a whole number"),
        ({"created_from": "yesterday"}, "not an ISO 8601"),
        ({"created_to": "2024-13-01"}, "not an ISO 8601"),
        ({"sort": "name"}, "unknown query parameter 'sort'"),
        ([("prefix", "a"), ("prefix", "b")], "given 2 times"),
        ({"continuation_token": "garbage!"}, ""),
    ],
)
def test_bad_list_queries_are_400(api: TestClient, params: Any, needle: str) -> None:
    error = error_of(api.get("/api/instances", params=params), 400)
    assert needle in error["message"]


def test_unknown_routes_and_methods(api: TestClient) -> None:
    assert error_of(api.get("/api/nothing-here"), 404)["type"] == "NotFound"
    assert error_of(post(api, "/api/explode/x"), 404)["message"].startswith("unknown action 'explode'")
    assert error_of(api.get("/api/instances/"), 400)["message"] == "missing instance id in the path"
    not_allowed = error_of(api.delete("/api/instances/x"), 405)
    assert not_allowed["type"] == "HTTPException"
    assert "GET" in api.delete("/api/instances/x").headers["allow"]
    assert error_of(api.get("/static/nope.js"), 404)["type"] == "HTTPException"


def test_page_and_assets_are_served_with_a_strict_policy(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script" in page.text and "static/app.js" in page.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = api.get(f"/static/{asset}")
        assert response.status_code == 200
        assert kind in response.headers["content-type"]
    # Everything is local: no asset names another host.
    for asset in ("app.js", "style.css"):
        assert "http://" not in api.get(f"/static/{asset}").text
        assert "https://" not in api.get(f"/static/{asset}").text


def test_a_malformed_connection_string_fails_at_once() -> None:
    with pytest.raises(ConnectionStringError):
        create_app("nonsense")


# --- over Endpoint= and through the real entry points -------------------------------------------------


def test_over_an_endpoint_connection_string(tmp_path: Path) -> None:
    with served(tmp_path) as endpoint, SyncDurableTaskClient(endpoint) as remote:
        remote.schedule_new_orchestration_instance("anything", instance_id="r-1", start_at=LATER)
        with TestClient(create_app(endpoint)) as api:
            assert api.get("/api/info").json()["connection"].endswith("(task hub default)")
            listed = api.get("/api/instances", params={"prefix": "r-"}).json()
            assert [i["instance_id"] for i in listed["instances"]] == ["r-1"]
            assert api.get("/api/instances/r-1").json()["runtime_status"] == "PENDING"
            assert api.get("/api/history/r-1").json()["events"] == []
            error_of(api.get("/api/instances/r-404"), 404)
            assert error_of(post(api, "/api/purge/r-1"), 409)["type"] == "InstanceStateError"


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_up(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            with contextlib.suppress(httpx.TransportError):
                return await http.get(url)
            await asyncio.sleep(0.02)
    raise AssertionError(f"nothing answers at {url}")


async def test_run_dashboard_serves_until_cancelled(tmp_path: Path) -> None:
    port = free_port()
    task = asyncio.create_task(run_dashboard(f"sqlite:///{tmp_path / 'run.db'}", "127.0.0.1", port))
    response = await wait_up(f"http://127.0.0.1:{port}/api/instances")
    assert response.status_code == 200
    assert response.json() == {"instances": [], "continuation_token": None}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(OSError):  # the port is closed again
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_run_dashboard_on_a_taken_port_raises_instead_of_exiting(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await run_dashboard(f"sqlite:///{tmp_path / 'run.db'}", "127.0.0.1", port)


async def test_serve_starts_the_dashboard_on_its_port(tmp_path: Path) -> None:
    from duratask.server.app import _start_dashboard, start_server

    server = await start_server(storage=f"sqlite:///{tmp_path / 'serve.db'}", host="127.0.0.1", port=0)
    port = free_port()
    dashboard = await _start_dashboard(server.settings, port)
    assert dashboard is not None
    try:
        info = (await wait_up(f"http://127.0.0.1:{port}/api/info")).json()
        assert info["connection"].startswith("sqlite:///")
    finally:
        dashboard.cancel()
        await asyncio.gather(dashboard, return_exceptions=True)
        await server.stop(0)
    assert dashboard.cancelled()
