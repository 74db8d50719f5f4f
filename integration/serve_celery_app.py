"""A tiny Celery app for the ``evcore serve`` integration tests: tasks that succeed, fail
and sleep. The broker URL and queue come from the environment, shared by worker and client.
"""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("serve_celery_app", broker=os.environ.get("EVCORE_SERVE_BROKER", "redis://"))
app.conf.update(
    task_default_queue=os.environ.get("EVCORE_SERVE_QUEUE", "evcore-serve"),
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_backend=os.environ.get("EVCORE_SERVE_BACKEND"),
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
