"""A tiny Celery app whose events go through evcore (``evcore.celery``), for
``test_celery_integration.py``. The broker, the events URL, the queue and the event exchange
come from the environment, so the worker subprocess and the test (the client) agree."""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "celery_evcore_app",
    broker=os.environ.get("EVCORE_CELERY_BROKER", "redis://"),
    events="evcore.celery:Events",
)
app.conf.update(
    evcore_events_url=os.environ.get("EVCORE_CELERY_EVENTS_URL"),
    event_exchange=os.environ.get("EVCORE_CELERY_EXCHANGE", "celeryev"),
    task_default_queue=os.environ.get("EVCORE_CELERY_QUEUE", "evcore-celery"),
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def boom() -> None:
    raise ValueError("boom")


@app.task(bind=True)
def progress(self) -> str:  # type: ignore[no-untyped-def]
    self.send_event("task-progress", current=1, total=1)
    return "done"
