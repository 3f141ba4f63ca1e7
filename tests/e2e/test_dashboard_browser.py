"""The dashboard in a real headless Chromium, over a real worker and SQLite file.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``playwright`` package (its
bundled driver only; no ``playwright install``). Each test names its instances with a prefix of
its own, so that they share one dashboard and one browser per module. Set
``DURATASK_DASHBOARD_SCREENSHOTS=/some/dir`` to keep screenshots of the list and an instance page.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest

from .dashboard_harness import CHROMIUM, CHROMIUM_ARGS, Dashboard, running_dashboard

if os.environ.get("CI") != "true":  # CI installs both (.ci/run): there a missing one fails the run
    pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright

expect.set_options(timeout=15_000)
SCREENSHOTS = os.environ.get("DURATASK_DASHBOARD_SCREENSHOTS")


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def instance_url(dashboard: Dashboard, instance_id: str) -> str:
    return f"{dashboard.url}#/instances/{quote(instance_id, safe='')}"


def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    with running_dashboard(tmp_path_factory.mktemp("dashboard")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    # Script errors and refused loads (a CSP violation, say) fail the test; HTTP error statuses
    # the page asked for on purpose ("Failed to load resource: ... 404") do not.
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if message.type == "error" and not message.text.startswith("Failed to load resource")
            else None
        ),
    )
    yield page
    context.close()
    assert problems == []


def rows(page: Page):  # type: ignore[no-untyped-def]
    return page.locator("table.instances tbody tr")


def chip(page: Page, status: str):  # type: ignore[no-untyped-def]
    return page.locator(f'.chip[data-status="{status}"]')


# --- the list ---------------------------------------------------------------------------------------


def test_list_shows_instances_and_filters_by_status_and_prefix(dashboard: Dashboard, page: Page) -> None:
    tag = unique("list")
    done = [dashboard.start("hello_cities", instance_id=f"{tag}-done-{n}") for n in range(3)]
    waiting = [dashboard.start("wait_for_approval", instance_id=f"{tag}-wait-{n}") for n in range(2)]
    failed = dashboard.start("fails", instance_id=f"{tag}-fail")
    for instance_id in [*done, failed]:
        dashboard.wait_done(instance_id)
    for instance_id in waiting:
        dashboard.wait_custom_status(instance_id, '"waiting"')

    page.goto(dashboard.url)
    expect(page.locator("#connection")).to_contain_text("dashboard.db (task hub default)")
    page.get_by_label("Instance id starts with").fill(tag)
    expect(rows(page)).to_have_count(6)
    expect(rows(page).locator("a")).to_have_text([*done, *waiting, failed])
    expect(chip(page, "")).to_have_attribute("aria-pressed", "true")
    screenshot(page, "duratask-dashboard-list.png")

    chip(page, "RUNNING").click()
    expect(rows(page)).to_have_count(2)
    expect(rows(page).locator(".badge")).to_have_text(["RUNNING", "RUNNING"])
    expect(chip(page, "RUNNING")).to_have_attribute("aria-pressed", "true")
    expect(chip(page, "")).to_have_attribute("aria-pressed", "false")

    chip(page, "FAILED").click()  # statuses add up
    expect(rows(page).locator(".badge")).to_have_text(["RUNNING", "RUNNING", "FAILED"])

    chip(page, "").click()  # "All" clears them
    expect(rows(page)).to_have_count(6)

    page.get_by_label("Instance id starts with").fill(f"{tag}-wait")
    expect(rows(page).locator("a")).to_have_text(waiting)

    # The filters live in the address: a reload (or a shared link) shows the same.
    assert f"prefix={tag}-wait" in page.url
    page.reload()
    expect(page.get_by_label("Instance id starts with")).to_have_value(f"{tag}-wait")
    expect(rows(page).locator("a")).to_have_text(waiting)

    page.get_by_role("button", name="Clear filters").click()
    expect(page.get_by_label("Instance id starts with")).to_have_value("")

    page.get_by_label("Instance id starts with").fill(f"{tag}-nothing")
    expect(page.get_by_text("No instances match these filters.")).to_be_visible()


def test_list_pages_forward_and_back(dashboard: Dashboard, page: Page) -> None:
    tag = unique("page")
    later = datetime.now(UTC) + timedelta(days=1)  # PENDING until then: the worker leaves them be
    ids = [
        dashboard.start("wait_for_approval", instance_id=f"{tag}-{n:02}", start_at=later) for n in range(12)
    ]

    page.goto(f"{dashboard.url}#/?prefix={tag}&size=10")
    previous = page.get_by_role("button", name="← Previous")
    following = page.get_by_role("button", name="Next →")
    expect(rows(page).locator("a")).to_have_text(ids[:10])
    expect(page.get_by_label("Per page")).to_have_value("10")
    expect(previous).to_be_disabled()
    expect(page.locator('[data-slot="page"]')).to_have_text("Page 1")

    following.click()
    expect(rows(page).locator("a")).to_have_text(ids[10:])
    expect(page.locator('[data-slot="page"]')).to_have_text("Page 2")
    expect(following).to_be_disabled()

    previous.click()
    expect(rows(page).locator("a")).to_have_text(ids[:10])
    expect(previous).to_be_disabled()

    page.get_by_label("Per page").select_option("25")
    expect(rows(page)).to_have_count(12)
    expect(following).to_be_disabled()


def test_created_range_filter(dashboard: Dashboard, page: Page) -> None:
    tag = unique("range")
    instance_id = dashboard.start("hello_cities", instance_id=f"{tag}-x")
    dashboard.wait_done(instance_id)
    page.goto(f"{dashboard.url}#/?prefix={tag}")
    expect(rows(page)).to_have_count(1)
    page.get_by_label("Created from").fill("2999-01-01T00:00:00")
    page.get_by_role("button", name="Apply").click()
    expect(rows(page)).to_have_count(0)
    page.get_by_label("Created from").fill("2000-01-01T00:00:00")
    page.get_by_label("Created to").fill("2999-01-01T00:00:00")
    page.get_by_role("button", name="Apply").click()
    expect(rows(page)).to_have_count(1)


# --- one instance -------------------------------------------------------------------------------------


def test_instance_page_shows_status_payloads_and_timeline(dashboard: Dashboard, page: Page) -> None:
    instance_id = dashboard.start("fan_out", 3, instance_id=unique("fan"))
    dashboard.wait_done(instance_id)

    page.goto(f"{dashboard.url}#/?prefix={instance_id}")
    page.get_by_role("link", name=instance_id).click()
    expect(page.locator("h1")).to_have_text(instance_id)
    expect(page.locator('[data-slot="status"]')).to_have_text("COMPLETED")
    expect(page.locator('[data-slot="name"]')).to_have_text("fan_out")
    expect(page.locator('[data-slot="input"]')).to_have_text("3")
    expect(page.locator('[data-slot="output"]')).to_have_text("6")  # 0*2 + 1*2 + 2*2
    expect(page.locator('[data-slot="custom-status"]')).to_have_text("—")
    expect(page.locator('[data-slot="failure"]')).to_be_hidden()
    expect(page.locator('[data-slot="live"]')).to_be_hidden()

    kinds = page.locator("table.timeline .kind")
    expect(kinds.last).to_have_text("ExecutionCompleted")
    listed = kinds.all_text_contents()
    assert listed.count("TaskScheduled") == 3 and listed.count("TaskCompleted") == 3
    assert "ExecutionStarted" in listed
    expect(page.locator("table.timeline tbody tr").first.locator(".offset")).to_contain_text("+")
    completed = page.locator("table.timeline tr", has=page.locator(".kind", has_text="ExecutionCompleted"))
    expect(completed.locator(".details")).to_contain_text("COMPLETED")

    # What a finished instance allows.
    toolbar = page.get_by_role("toolbar", name="Actions")
    expect(toolbar.get_by_role("button", name="Purge…")).to_be_enabled()
    for name in ("Raise event…", "Suspend", "Resume", "Terminate…"):
        expect(toolbar.get_by_role("button", name=name)).to_be_disabled()
    screenshot(page, "duratask-dashboard-instance.png")

    page.get_by_role("link", name="← All instances").click()
    expect(page.locator("h1")).to_have_text("Orchestration instances")


def test_raise_event_to_a_waiting_instance_completes_it(dashboard: Dashboard, page: Page) -> None:
    instance_id = dashboard.start("wait_for_approval", instance_id=unique("approve"))
    dashboard.wait_custom_status(instance_id, '"waiting"')

    page.goto(instance_url(dashboard, instance_id))
    expect(page.locator('[data-slot="status"]')).to_have_text("RUNNING")
    expect(page.locator('[data-slot="live"]')).to_be_visible()
    expect(page.locator('[data-slot="custom-status"]')).to_have_text('"waiting"')

    page.get_by_role("button", name="Raise event…").click()
    dialog = page.locator("#raise-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Event name").fill("approval")
    dialog.get_by_label("Data (JSON, optional)").fill("{not json")
    dialog.get_by_role("button", name="Raise event", exact=True).click()
    expect(dialog.get_by_role("alert")).to_contain_text("not valid JSON")
    expect(dialog).to_be_visible()  # nothing was sent; fix it and try again

    dialog.get_by_label("Data (JSON, optional)").fill('{"approved": true, "by": "<i>me</i>"}')
    dialog.get_by_role("button", name="Raise event", exact=True).click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#toast")).to_contain_text("approval")

    # No reload: the page refreshes itself while the instance runs.
    expect(page.locator('[data-slot="status"]')).to_have_text("COMPLETED")
    expect(page.locator('[data-slot="output"]')).to_have_text(
        '{\n  "approved": true,\n  "by": "<i>me</i>"\n}'
    )
    expect(page.locator('[data-slot="custom-status"]')).to_have_text('"approved"')
    expect(page.locator('[data-slot="live"]')).to_be_hidden()
    expect(page.locator("table.timeline .kind", has_text="EventRaised")).to_have_count(1)
    assert page.locator("main i").count() == 0


def test_suspend_and_resume(dashboard: Dashboard, page: Page) -> None:
    instance_id = dashboard.start("wait_for_approval", instance_id=unique("pause"))
    dashboard.wait_custom_status(instance_id, '"waiting"')
    page.goto(instance_url(dashboard, instance_id))
    toolbar = page.get_by_role("toolbar", name="Actions")
    status = page.locator('[data-slot="status"]')
    expect(status).to_have_text("RUNNING")
    expect(toolbar.get_by_role("button", name="Resume")).to_be_disabled()

    toolbar.get_by_role("button", name="Suspend").click()
    expect(status).to_have_text("SUSPENDED")
    expect(toolbar.get_by_role("button", name="Suspend")).to_be_disabled()
    expect(toolbar.get_by_role("button", name="Resume")).to_be_enabled()

    toolbar.get_by_role("button", name="Resume").click()
    expect(status).to_have_text("RUNNING")
    kinds = page.locator("table.timeline .kind")
    expect(kinds.filter(has_text="ExecutionSuspended")).to_have_count(1)
    expect(kinds.filter(has_text="ExecutionResumed")).to_have_count(1)


def test_terminate_then_purge_with_confirmation(dashboard: Dashboard, page: Page) -> None:
    instance_id = dashboard.start("wait_for_approval", instance_id=unique("stop"))
    dashboard.wait_custom_status(instance_id, '"waiting"')
    page.goto(instance_url(dashboard, instance_id))
    toolbar = page.get_by_role("toolbar", name="Actions")
    status = page.locator('[data-slot="status"]')
    dialog = page.locator("#confirm-dialog")
    expect(status).to_have_text("RUNNING")

    toolbar.get_by_role("button", name="Terminate…").click()
    expect(dialog.get_by_role("heading")).to_have_text("Terminate this instance?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    page.wait_for_timeout(1500)  # a refresh or two later, still running: cancel did nothing
    expect(status).to_have_text("RUNNING")

    toolbar.get_by_role("button", name="Terminate…").click()
    dialog.get_by_label("Reason (optional, kept as the output)").fill("no longer needed")
    dialog.get_by_role("button", name="Terminate").click()
    expect(status).to_have_text("TERMINATED")
    expect(page.locator('[data-slot="output"]')).to_have_text('"no longer needed"')
    expect(page.locator("table.timeline .kind", has_text="ExecutionTerminated")).to_have_count(1)

    toolbar.get_by_role("button", name="Purge…").click()
    expect(dialog.get_by_role("heading")).to_have_text("Purge this instance?")
    expect(dialog.get_by_text("Reason")).to_be_hidden()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert dashboard.get(instance_id) is not None

    toolbar.get_by_role("button", name="Purge…").click()
    dialog.get_by_role("button", name="Purge").click()
    expect(page.locator("h1")).to_have_text("Orchestration instances")
    expect(page.locator("#toast")).to_have_text("Purged 1 instance.")
    assert dashboard.get(instance_id) is None

    page.goto(instance_url(dashboard, instance_id))
    expect(page.locator("h1")).to_have_text("Instance not found")


def test_failed_instance_shows_its_failure(dashboard: Dashboard, page: Page) -> None:
    instance_id = dashboard.start("fails", instance_id=unique("boom"))
    dashboard.wait_done(instance_id)
    page.goto(instance_url(dashboard, instance_id))
    expect(page.locator('[data-slot="status"]')).to_have_text("FAILED")
    failure = page.locator('[data-slot="failure"]')
    expect(failure).to_be_visible()
    expect(failure.locator(".error-type").first).to_contain_text("TaskFailedError")
    expect(failure.locator(".error-message").first).to_contain_text("unhandled boom")
    expect(failure.locator("pre.stack").first).to_be_visible()  # the instance's own stack, open
    expect(failure.get_by_text("Caused by")).to_be_visible()
    expect(failure.locator(".error-type").nth(1)).to_have_text("ValueError")
    failed_task = page.locator("table.timeline tr", has=page.locator(".kind", has_text="TaskFailed"))
    expect(failed_task.locator(".details")).to_contain_text("unhandled boom")


def test_html_in_ids_and_payloads_is_shown_as_text(dashboard: Dashboard, page: Page) -> None:
    instance_id = f'<b>x</b><img src=x onerror="window.pwned=1">-{uuid.uuid4().hex[:6]}'
    dashboard.start("wait_for_approval", {"note": "<script>window.pwned=2</script>"}, instance_id=instance_id)
    dashboard.wait_custom_status(instance_id, '"waiting"')

    page.goto(dashboard.url)
    page.get_by_label("Instance id starts with").fill(instance_id)
    expect(rows(page)).to_have_count(1)
    link = rows(page).locator("a")
    expect(link).to_have_text(instance_id)
    assert page.locator("table.instances b, table.instances img").count() == 0

    link.click()
    expect(page.locator("h1")).to_have_text(instance_id)
    expect(page.locator('[data-slot="input"]')).to_contain_text("<script>window.pwned=2</script>")
    expect(page.locator("table.timeline tbody tr").first).to_be_visible()
    assert page.locator("main b, main img, main script").count() == 0
    assert page.evaluate("window.pwned") is None
    assert instance_id in page.title()


def test_unknown_instance_says_so(dashboard: Dashboard, page: Page) -> None:
    page.goto(instance_url(dashboard, "no-such-instance"))
    expect(page.locator("h1")).to_have_text("Instance not found")
    expect(page.get_by_text("no-such-instance")).to_be_visible()


def test_keyboard_and_labels(dashboard: Dashboard, page: Page) -> None:
    tag = unique("keys")
    instance_id = dashboard.start("hello_cities", instance_id=f"{tag}-1")
    dashboard.wait_done(instance_id)
    page.goto(dashboard.url)
    expect(rows(page).first).to_be_visible()

    # Every form control has a label.
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')]"
        ".filter(e => e.labels.length === 0).map(e => e.outerHTML)"
    )
    assert unlabelled == []

    prefix = page.get_by_label("Instance id starts with")
    prefix.focus()
    page.keyboard.type(tag)
    page.keyboard.press("Enter")
    expect(rows(page)).to_have_count(1)

    chip(page, "COMPLETED").focus()
    page.keyboard.press("Space")
    expect(chip(page, "COMPLETED")).to_have_attribute("aria-pressed", "true")
    expect(rows(page)).to_have_count(1)

    rows(page).locator("a").focus()
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text(instance_id)
    expect(page.locator("h1")).to_be_focused()  # the new view's heading takes focus
