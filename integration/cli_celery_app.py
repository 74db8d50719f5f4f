"""A tiny Celery app for the CLI's integration tests: a task that works, one that fails,
one that sleeps (``evcore serve``'s liveness test).

The broker URL and the queue come from the environment, so the worker subprocess and the
test (the client) agree on both.
"""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("cli_celery_app", broker=os.environ.get("EVCORE_CLI_BROKER", "redis://"))
app.conf.update(
    task_default_queue=os.environ.get("EVCORE_CLI_QUEUE", "evcore-cli"),
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    # Where results go when a test reads Celery's result backend (none by default).
    result_backend=os.environ.get("EVCORE_CLI_BACKEND"),
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def boom() -> None:
    raise ValueError("boom")


@app.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
