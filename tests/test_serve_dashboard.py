"""The dashboard at ``/`` in headless Chromium (Playwright, Debian's ``/usr/bin/chromium``):
workers and tasks appear, filters work, a failure shows its traceback, live updates arrive
through ``/api/events/stream``, and markup in events stays inert text."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from _serve_support import event, lifecycle

from evcore.serve.app import create_app
from evcore.serve.monitor import Monitor, MonitorOptions

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
XSS = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


class Served:
    """A monitor served by uvicorn in a thread; ``feed`` applies events on its loop."""

    def __init__(self) -> None:
        self.monitor = Monitor(None, MonitorOptions())
        config = uvicorn.Config(
            create_app(self.monitor, manage_monitor=False),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def feed(self, events: list[dict[str, Any]]) -> None:
        assert self.loop is not None
        done = threading.Event()

        def apply() -> None:
            self.monitor.apply(events)
            done.set()

        self.loop.call_soon_threadsafe(apply)
        assert done.wait(5)

    def stop(self) -> None:
        self.monitor.stream.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def served() -> Iterator[tuple[Served, str]]:
    running = Served()
    base = running.start()
    try:
        yield running, base
    finally:
        running.stop()


@pytest.fixture
def page() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def test_workers_tasks_filters_and_a_traceback(served: tuple[Served, str], page: Any) -> None:
    running, base = served
    now = time.time()
    running.feed(
        [
            event("worker-online", "w1@example", freq=2.0, sw_ident="py-celery", sw_ver="5.7.0"),
            *lifecycle("ok-1", "proj.add", at=now - 10),
            *lifecycle("bad-1", "proj.fetch", at=now - 5, outcome="failed"),
        ]
    )
    page.goto(base + "/")
    page.wait_for_selector("#workers tbody tr")
    assert "w1@example" in page.inner_text("#workers")
    assert "online" in page.inner_text("#workers")
    page.wait_for_selector("#tasks tbody tr >> nth=1")
    assert page.locator("#tasks tbody tr").count() == 2
    page.select_option("#state", "FAILURE")
    # (a locator, not wait_for_function: the page's CSP forbids evaluating strings)
    playwright.expect(page.locator("#tasks tbody tr")).to_have_count(1)
    assert "bad-1" in page.inner_text("#tasks")
    page.select_option("#state", "")
    page.click("#workers >> text=w1@example")  # a worker's tasks
    playwright.expect(page.locator("#tasks tbody tr")).to_have_count(2)
    assert page.input_value("#workername") == "w1@example"
    page.fill("#received-start", "2999-01-01T00:00")  # nothing received that late
    page.dispatch_event("#received-start", "change")
    playwright.expect(page.locator("#tasks tbody tr")).to_have_count(0)
    page.fill("#received-start", "")
    page.dispatch_event("#received-start", "change")
    page.click("text=bad-1")
    page.wait_for_selector("#detail:not([hidden])")
    assert "ValueError('bad')" in page.inner_text("#detail")
    assert page.inner_text("#detail-traceback") == "Traceback ..."
    page.keyboard.press("Escape")
    assert page.locator("#detail").is_hidden()


def test_live_update_arrives_without_reload(served: tuple[Served, str], page: Any) -> None:
    running, base = served
    running.feed([event("worker-online", "w1@example", freq=2.0)])
    page.goto(base + "/")
    page.wait_for_selector("#workers tbody tr")
    page.wait_for_timeout(300)  # the stream is open
    running.feed([event("task-received", "w1@example", uuid="live-1", name="proj.add")])
    started = time.monotonic()
    page.wait_for_selector("text=live-1", timeout=5000)
    assert time.monotonic() - started < 5


def test_markup_in_events_stays_text(served: tuple[Served, str], page: Any) -> None:
    running, base = served
    running.feed(
        [event("task-received", "w1@example", uuid="xss-1", name=XSS, args=XSS, kwargs=XSS)]
    )
    response = page.goto(base + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("#tasks tbody tr")
    cells = page.locator("#tasks tbody tr td")
    texts = [cells.nth(index).text_content() for index in range(cells.count())]
    assert XSS in texts  # shown as the literal string
    page.click("text=xss-1")
    page.wait_for_selector("#detail:not([hidden])")
    assert XSS in page.inner_text("#detail")
    assert page.locator("#tasks img, #detail img, #tasks script, #detail script").count() == 0
    assert page.evaluate("window.pwned") is None
