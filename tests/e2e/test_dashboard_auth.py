"""A dashboard with a token: every page, file and API call needs it; the browser is asked for it.

The app runs on a real SQLite file through starlette's TestClient; the last test runs the real
`duratask serve --auth-token ... --dashboard-port ...` in a process of its own.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from duratask.dashboard import create_app

from ..compat.serverlib import ServerProcess, free_port

TOKEN = "s3cret-token"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def wait_until_refused(url: str, alive: Callable[[], bool] = lambda: True) -> None:
    """Until the dashboard at ``url`` listens; it must refuse a request without the token."""
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            raise AssertionError("the dashboard answered a request without the token")
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
            return
        except OSError:  # not listening yet
            assert alive(), "the dashboard process ended"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(f"sqlite:///{tmp_path / 'auth.db'}", auth_token=TOKEN)) as client:
        yield client


@pytest.mark.parametrize("path", ["/", "/api/instances", "/static/app.js"])
def test_without_the_token_every_path_is_refused_with_a_browser_challenge(
    guarded: TestClient, path: str
) -> None:
    response = guarded.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic ")
    assert response.json()["error"]["type"] == "UnauthenticatedError"
    assert "content-security-policy" in response.headers  # the refusal is a page of ours too


@pytest.mark.parametrize(
    "headers",
    [
        basic("admin", "wrong"),
        basic(TOKEN, ""),  # the token as the user name is not the password
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Token {TOKEN}"},
        {"Authorization": "Basic !!!not-base64!!!"},
        {"Authorization": "Bearer"},
    ],
)
def test_wrong_or_malformed_credentials_are_refused(guarded: TestClient, headers: dict[str, str]) -> None:
    assert guarded.get("/api/instances", headers=headers).status_code == 401


@pytest.mark.parametrize(
    "headers", [basic("anyone", TOKEN), basic("", TOKEN), {"Authorization": f"Bearer {TOKEN}"}]
)
def test_the_token_opens_pages_and_the_api(guarded: TestClient, headers: dict[str, str]) -> None:
    assert guarded.get("/", headers=headers).status_code == 200
    answer = guarded.get("/api/instances", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["instances"] == []


def test_without_a_token_the_dashboard_stays_open(tmp_path: Path) -> None:
    with TestClient(create_app(f"sqlite:///{tmp_path / 'open.db'}")) as client:
        assert client.get("/api/instances").status_code == 200


def test_serve_guards_its_dashboard_with_its_auth_token(tmp_path: Path) -> None:
    dashboard_port = free_port()
    served = ServerProcess(
        f"sqlite:///{tmp_path / 'serve.db'}", dashboard_port=dashboard_port, auth_token=TOKEN
    )
    url = f"http://127.0.0.1:{dashboard_port}/api/instances"
    try:
        wait_until_refused(url)
        request = urllib.request.Request(url, headers=basic("me", TOKEN))
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200
    finally:
        code, output = served.terminate()
    assert code == 0, output


def test_a_browser_given_the_token_uses_the_guarded_dashboard(tmp_path: Path) -> None:
    """Headless Chromium answers the Basic challenge once; the page's own API calls carry it too."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    from .dashboard_harness import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    dashboard_port = free_port()
    served = ServerProcess(
        f"sqlite:///{tmp_path / 'web.db'}", dashboard_port=dashboard_port, auth_token=TOKEN
    )
    url = f"http://127.0.0.1:{dashboard_port}/"
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                # Without credentials Chromium gives up on the challenge (no one to ask).
                with pytest.raises(playwright_api.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
                    browser.new_context().new_page().goto(url)
                page = browser.new_context(http_credentials={"username": "me", "password": TOKEN}).new_page()
                opened = page.goto(url)
                assert opened is not None and opened.status == 200
                # Filled in from the API: the page's fetches were let through as well.
                playwright_api.expect(page.locator("#connection")).to_contain_text("web.db", timeout=15_000)
            finally:
                browser.close()
    finally:
        code, output = served.terminate()
    assert code == 0, output


def test_the_dashboard_command_takes_a_token(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "duratask", "dashboard", "-c", f"sqlite:///{tmp_path / 'cli.db'}"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--auth-token", TOKEN, "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api/instances"
    try:
        wait_until_refused(url, alive=lambda: process.poll() is None)
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200
    finally:
        process.kill()
        process.communicate(timeout=30)
