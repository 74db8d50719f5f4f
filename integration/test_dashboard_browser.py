"""The live dashboard in a real browser: headless Chromium, driven by Playwright, looking at
``evcore serve`` fed by a real Celery worker over a Redis of the test's own.

Chromium is Debian's (``/usr/bin/chromium``, or ``EVCORE_CHROMIUM``): browsers cannot be
downloaded here. Set ``EVCORE_SCREENSHOTS`` to a folder to keep the screenshots the test
takes (``docs/images`` holds the ones the README shows).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _net import free_port, wait_for
from _redis_support import PrivateRedis

pytestmark = pytest.mark.redis

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
QUEUE = f"evcore-dash-{uuid.uuid4().hex[:8]}"
WORKER = f"dashtest-{uuid.uuid4().hex[:6]}@localhost"
HOSTILE_ARG = "<img src=x onerror=window.__xss=1>"
HOSTILE_TAIL = "<script>window.__xss=2</script>"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = os.environ.get("EVCORE_CHROMIUM") or shutil.which("chromium") or ""
    if not path:
        reason = "no chromium on PATH (apt-get install chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def environment(redis_server: PrivateRedis) -> dict[str, str]:
    return {
        **os.environ,
        "EVCORE_CLI_BROKER": redis_server.url,
        "EVCORE_CLI_QUEUE": QUEUE,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }


@pytest.fixture(scope="module")
def service(redis_server: PrivateRedis, environment: dict[str, str]) -> Iterator[str]:
    """``evcore serve`` on the private Redis; its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "evcore"), "serve", redis_server.url, "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_for(lambda: _answers(base + "/healthz"), timeout=30):
            stop(process)
            raise AssertionError(f"evcore serve did not start: {process.stderr.read()}")  # type: ignore[union-attr]
        yield base
    finally:
        stop(process)


@pytest.fixture(scope="module")
def celery_worker(service: str, environment: dict[str, str]) -> Iterator[None]:
    process = subprocess.Popen(
        [
            str(BIN / "celery"),
            "-A",
            "cli_celery_app",
            "worker",
            "-E",
            "--pool",
            "solo",
            "-n",
            WORKER,
            "--without-gossip",
            "--without-mingle",
            "-l",
            "warning",
        ],
        cwd=HERE,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        stop(process)


@pytest.fixture(scope="module")
def app(environment: dict[str, str]) -> Any:
    """A Celery client of its own on the private broker (the tiny module's app may already
    be bound to another test's broker and queue: Celery caches both once used)."""
    from celery import Celery

    client = Celery("dashboard-test-client", broker=environment["EVCORE_CLI_BROKER"])
    client.conf.task_send_sent_event = True
    try:
        yield client
    finally:
        client.close()


def send(app: Any, task: str, *args: Any) -> Any:
    """Send ``cli_celery_app.<task>(*args)`` to the test worker's queue."""
    return app.send_task(f"cli_celery_app.{task}", args=args, queue=QUEUE)


@pytest.fixture(scope="module")
def page(service: str, celery_worker: None) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.problems = []  # type: ignore[attr-defined]
            page.on("pageerror", lambda error: page.problems.append(str(error)))  # type: ignore[attr-defined]
            page.on(
                "console",
                lambda message: message.type == "error" and page.problems.append(message.text),  # type: ignore[attr-defined]
            )
            page.on("dialog", lambda dialog: page.problems.append("dialog: " + dialog.message))  # type: ignore[attr-defined]
            page.goto(service + "/")
            yield page
        finally:
            browser.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def task_known(service: str, task_id: str, state: str) -> bool:
    try:
        with urllib.request.urlopen(f"{service}/api/dashboard/tasks/{task_id}", timeout=2) as r:
            return bool(json.load(r)["state"] == state)
    except OSError:
        return False


def screenshot(page: Any, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("EVCORE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"dashboard-{name}.png"))


def test_workers_and_tasks_appear_and_failures_show_their_traceback(
    page: Any, app: Any, service: str, tmp_path: Path
) -> None:
    page.wait_for_selector(f"#workers >> text={WORKER}", timeout=30_000)
    assert page.locator("#workers tr", has_text=WORKER).locator(".status-online").count() == 1

    ok, failing = send(app, "add", 2, 3), send(app, "boom")
    assert wait_for(lambda: task_known(service, failing.id, "FAILURE"), timeout=30)
    assert wait_for(lambda: task_known(service, ok.id, "SUCCESS"), timeout=30)
    screenshot(page, "overview", tmp_path)

    page.goto(f"{service}/#/tasks")
    page.wait_for_selector(f'#tasks tr[data-uuid="{failing.id}"]', timeout=5_000)
    row = page.locator(f'#tasks tr[data-uuid="{failing.id}"]')
    assert "FAILURE" in row.inner_text() and "ValueError" in row.inner_text()
    screenshot(page, "tasks", tmp_path)

    row.locator("a").first.click()
    page.wait_for_selector("#task-traceback", timeout=5_000)
    assert "ValueError: boom" in page.locator("#task-traceback").inner_text()
    assert page.locator("#timeline li").count() >= 3
    screenshot(page, "task", tmp_path)
    assert page.problems == []


def test_filters_narrow_the_table(page: Any, app: Any, service: str) -> None:
    ok, failing = send(app, "add", 1, 1), send(app, "boom")
    assert wait_for(lambda: task_known(service, failing.id, "FAILURE"), timeout=30)
    assert wait_for(lambda: task_known(service, ok.id, "SUCCESS"), timeout=30)
    page.goto(f"{service}/#/tasks")
    page.wait_for_selector("#task-filters")
    page.select_option("#filter-state", "FAILURE")
    page.fill("#filter-worker", WORKER)
    page.click("#apply-filters")
    page.wait_for_selector(f'#tasks tr[data-uuid="{failing.id}"]', timeout=5_000)
    states = page.locator("#tasks tbody td.state").all_inner_texts()
    assert states and set(states) == {"FAILURE"}
    assert page.locator(f'#tasks tr[data-uuid="{ok.id}"]').count() == 0

    page.fill("#search", "cli_celery_app.add")
    page.select_option("#filter-state", "")
    page.keyboard.press("Enter")  # the form submits from the keyboard
    page.wait_for_selector(f'#tasks tr[data-uuid="{ok.id}"]', timeout=5_000)
    assert page.locator(f'#tasks tr[data-uuid="{failing.id}"]').count() == 0
    assert page.problems == []


def test_a_new_task_arrives_live_within_a_second(page: Any, app: Any, service: str) -> None:
    page.goto(f"{service}/#/tasks")
    page.wait_for_selector("#tasks")
    result = send(app, "add", 20, 22)
    assert wait_for(lambda: task_known(service, result.id, "SUCCESS"), timeout=30, step=0.01)
    # The server holds the event now; the page shows it without a reload within a second.
    page.wait_for_selector(f'#tasks tr[data-uuid="{result.id}"]', timeout=1_000)
    assert "SUCCESS" in page.locator(f'#tasks tr[data-uuid="{result.id}"]').inner_text()


def test_hostile_args_render_as_inert_text(
    page: Any, app: Any, service: str, tmp_path: Path
) -> None:
    result = send(app, "add", HOSTILE_ARG, HOSTILE_TAIL)
    assert wait_for(lambda: task_known(service, result.id, "SUCCESS"), timeout=30)
    page.goto(f"{service}/#/task/{result.id}")
    page.wait_for_selector("#task-args", timeout=5_000)
    assert HOSTILE_ARG in page.locator("#task-args").inner_text()
    assert HOSTILE_TAIL in page.locator("#task-result").inner_text()
    page.goto(f"{service}/#/tasks?q=onerror")
    page.wait_for_selector(f'#tasks tr[data-uuid="{result.id}"]', timeout=5_000)
    time.sleep(0.5)
    assert page.evaluate("window.__xss") is None
    assert page.locator("#view img, #view script").count() == 0
    screenshot(page, "hostile", tmp_path)
    assert page.problems == []
