"""The dashboard in real headless Chromium (Debian's ``chromium``, driven by Playwright) against a
worker subprocess on Redis: the workers page shows the worker, a task sent during the test
appears on the tasks page without a reload, the task page shows its result, revoke stops a
countdown task, pool grow changes the pool size. A screenshot of each page is saved under
``build/test-artifacts/dashboard/`` (git-ignored, kept after the run; and to
``$CELERIAC_DASHBOARD_SCREENSHOT`` when set, for the docs)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celeriac.plugins.dashboard import DashboardConfig, create_app
from celeriac.testing import wait_for

from .conftest import Cluster, serve, stop_serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CHROMIUM = os.environ.get("CELERIAC_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[3] / "build" / "test-artifacts" / "dashboard"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        message = f"no Chromium at {CHROMIUM}; install Debian's browser with `apt-get install -y chromium`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def dashboard(cluster: Cluster) -> Iterator[str]:
    web = create_app(cluster.app, DashboardConfig(), inspect_timeout=2.0)
    url, server, thread = serve(web)
    try:
        yield url
    finally:
        stop_serving(server, thread)


@pytest.fixture
def page(browser: Any, dashboard: str) -> Iterator[Any]:
    """A browser tab; closed before the dashboard stops (its event stream ends with it)."""
    tab = browser.new_page(viewport={"width": 1360, "height": 900})
    try:
        yield tab
    finally:
        tab.close()


def test_dashboard_pages_live_updates_revoke_and_pool_grow(page: Any, cluster: Cluster, dashboard: str) -> None:
    cluster.app.conf.update({"task_send_sent_event": True})  # countdown tasks show up before a worker has them
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    shots = SCREENSHOTS
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()

    # Workers: the worker is listed online (its heartbeats arrive over the event stream).
    page.goto(f"{dashboard}/workers")
    row = page.locator(f'tr[data-worker="{cluster.hostname}"]')
    row.locator(".badge.online").wait_for(timeout=15_000)
    page.screenshot(path=str(shots / "workers.png"))

    # Tasks: a task sent now appears without a reload.
    page.goto(f"{dashboard}/tasks")
    page.locator("#live.on").wait_for(timeout=10_000)
    page.evaluate("window.__noReload = true")
    result = cluster.app.send_task("dashboard_tasks.add", [20, 22])
    task_row = page.locator(f'tr[data-task="{result.id}"]')
    task_row.locator(".badge.SUCCESS").wait_for(timeout=15_000)
    assert page.evaluate("window.__noReload") is True
    page.screenshot(path=str(shots / "tasks.png"))

    # Task detail: opened from the table, shows the result.
    task_row.locator("a").click()
    page.wait_for_url(f"**/tasks/{result.id}")
    page.locator("#result pre", has_text="42").wait_for(timeout=10_000)
    assert page.locator("h1 .badge").inner_text() == "SUCCESS"
    assert page.locator("#exception").count() == 0  # no exception: no section, and no stray "null"
    assert "null" not in page.locator("#main").inner_text()
    page.screenshot(path=str(shots / "task.png"))

    # Revoke: a countdown task revoked from its page never runs.
    later = cluster.app.send_task("dashboard_tasks.add", [1, 1], countdown=3)
    page.goto(f"{dashboard}/tasks/{later.id}")
    page.locator("h1 .badge.PENDING").wait_for(timeout=10_000)
    page.locator("#revoke").click()
    page.locator("h1 .badge.REVOKED").wait_for(timeout=20_000)
    assert later.state == "REVOKED"

    # Worker detail: pool grow changes the pool size.
    page.goto(f"{dashboard}/workers/{cluster.hostname}")
    size = page.locator("#pool-size")
    size.wait_for(timeout=10_000)
    before = int(size.inner_text())
    page.locator('form[data-form="pool-grow"] button').click()
    page.locator("#pool-size", has_text=str(before + 1)).wait_for(timeout=10_000)
    page.screenshot(path=str(shots / "worker.png"), full_page=True)
    page.locator('form[data-form="pool-shrink"] button').click()
    page.locator("#pool-size", has_text=str(before)).wait_for(timeout=10_000)

    # Queues and graphs render (and a failed task shows on the graphs).
    cluster.app.send_task("dashboard_tasks.fail", ["for the graph"])
    page.goto(f"{dashboard}/queues")
    page.locator(f'tr[data-queue="{cluster.queue}"]').wait_for(timeout=10_000)
    assert cluster.hostname in page.locator(f'tr[data-queue="{cluster.queue}"]').inner_text()
    page.screenshot(path=str(shots / "queues.png"))
    page.goto(f"{dashboard}/graphs")
    page.locator("#throughput svg path").first.wait_for(timeout=10_000)
    page.locator("#runtimes svg rect").first.wait_for(timeout=10_000)
    page.screenshot(path=str(shots / "graphs.png"))

    for name in ("workers", "tasks", "task", "worker", "queues", "graphs"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
    target = os.environ.get("CELERIAC_DASHBOARD_SCREENSHOT")
    if target:
        wait_for(lambda: cluster.app.send_task("dashboard_tasks.add", [2, 2]).get(timeout=10) == 4)
        page.goto(f"{dashboard}/tasks")
        page.locator("tr[data-task]").first.wait_for(timeout=10_000)
        page.screenshot(path=target)
    assert errors == []
