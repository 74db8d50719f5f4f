"""Events and monitors for the ``evcore serve`` tests."""

from __future__ import annotations

import itertools
import time
from typing import Any

from starlette.applications import Starlette

from evcore.serve.app import create_app
from evcore.serve.monitor import Monitor, MonitorOptions

_clock = itertools.count(1)


def event(
    type_: str,
    hostname: str = "w1@example",
    *,
    at: float | None = None,
    received: float | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """An event as the receiver hands it over: ``at`` is the sender's timestamp,
    ``received`` the receiver's ``local_received`` (both default to now)."""
    now = time.time()
    timestamp = now if at is None else at
    return {
        "hostname": hostname,
        "utcoffset": 0,
        "pid": 42,
        "clock": next(_clock),
        **fields,
        "timestamp": timestamp,
        "type": type_,
        "local_received": timestamp if received is None else received,
    }


def lifecycle(
    uuid: str,
    name: str = "proj.add",
    worker: str = "w1@example",
    *,
    at: float,
    outcome: str = "succeeded",
    runtime: float = 0.5,
    client: str = "gen4242@web-1",
) -> list[dict[str, Any]]:
    """sent -> received -> started -> outcome, one second apart from ``at``."""
    finished: dict[str, Any] = {"runtime": runtime, "result": "4"}
    if outcome == "failed":
        finished = {"exception": "ValueError('bad')", "traceback": "Traceback ..."}
    return [
        event(
            "task-sent",
            client,
            at=at,
            uuid=uuid,
            name=name,
            args="(2, 2)",
            kwargs="{}",
            queue="celery",
        ),
        event("task-received", worker, at=at + 1, uuid=uuid, name=name, args="(2, 2)", kwargs="{}"),
        event("task-started", worker, at=at + 2, uuid=uuid),
        event(f"task-{outcome}", worker, at=at + 3, uuid=uuid, **finished),
    ]


def monitor_app(**options: Any) -> tuple[Monitor, Starlette]:
    """A monitor with no broker (fed with ``monitor.apply``) and its application."""
    credentials = options.pop("credentials", None)
    monitor = Monitor(None, MonitorOptions(**options))
    return monitor, create_app(monitor, credentials=credentials, manage_monitor=False)
