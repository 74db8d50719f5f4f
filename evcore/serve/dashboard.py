"""The live web dashboard: a static page, its JSON endpoints and a server-sent event stream.

The page (``evcore/serve/static/``) is plain HTML, CSS and JavaScript shipped in the wheel:
no CDN, no build step. It renders everything it is sent as text. Live updates come as
server-sent events: every ``tick`` seconds each open stream gets one small summary, computed
afresh, so a slow or hidden tab holds at most the summary being written (the stream waits
for the socket to drain) and never a growing queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from evcore.serve.monitor import Monitor
from evcore.serve.rates import task_stats
from evcore.serve.views import (
    ROW_TEXT,
    TaskQuery,
    query_tasks,
    task_detail,
    worker_detail,
    workers_table,
)
from evcore.state import State
from evcore.state.liveness import LivenessPolicy

STATIC = Path(__file__).with_name("static")

#: The page loads only its own files and talks only to its own origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass
class DashboardSource:
    """The dashboard of one :class:`~evcore.serve.monitor.Monitor`, and its live streams.

    ``closing`` is set when the service shuts down, so open streams end at once.
    """

    monitor: Monitor
    tick: float = 0.5
    max_streams: int = 32
    stream_lifetime: float = 300.0
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    streams: int = 0
    #: The last tick's encoded summary and when it was made: every open stream shares it.
    last_tick: tuple[float, bytes] = (float("-inf"), b"")

    @property
    def state(self) -> State:
        return self.monitor.state

    @property
    def liveness(self) -> LivenessPolicy:
        return self.monitor.options.liveness


class BadQuery(ValueError):
    """A query-string value the dashboard refuses (answered with 400 and the reason)."""


def _text(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "")
    if len(value) > ROW_TEXT:
        raise BadQuery(f"{name} is longer than {ROW_TEXT} characters")
    return value


def _int(params: Mapping[str, str], name: str, default: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise BadQuery(f"{name} must be a whole number from 0 to {high}")
    return min(int(raw), high)


def _time(params: Mapping[str, str], name: str) -> float | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw[:32])
    except ValueError:
        raise BadQuery(f"{name} must be a time in seconds since the epoch") from None
    if not math.isfinite(value):
        raise BadQuery(f"{name} must be a finite number")
    return value


def parse_task_query(params: Mapping[str, str]) -> TaskQuery:
    """Read a :class:`TaskQuery` from the table's query string, refusing what is out of range."""
    sort = params.get("sort", "received")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadQuery("order must be asc or desc")
    return TaskQuery(
        search=_text(params, "q"),
        state=_text(params, "state"),
        name=_text(params, "name"),
        worker=_text(params, "worker"),
        since=_time(params, "since"),
        until=_time(params, "until"),
        sort=sort
        if sort in ("received", "started", "runtime", "name", "state", "worker")
        else "received",
        descending=order == "desc",
        offset=_int(params, "offset", 0, 10_000_000),
        limit=_int(params, "limit", 50, 500),
    )


def secure(response: Response) -> Response:
    """Add the dashboard's security headers to ``response``."""
    response.headers.update(SECURITY_HEADERS)
    return response


def health(monitor: Monitor) -> dict[str, Any]:
    """What the health banner shows: the receiver's link and what was lost or refused."""
    stats = monitor.source_stats()
    lost = stats.lost if stats.lost is not None else monitor.state.lost_events
    return {
        "connected": monitor.connected or monitor.url is None,
        "lost": sum(lost.values()),
        "rejected": sum((stats.rejected or {}).values()) + sum(monitor.state.rejected.values()),
        "possibly_lost": len(monitor.losses.lost),
    }


def outcomes_per_minute(series: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """``(minute, succeeded, failed)`` rows from a per-second rates series."""
    start, types = series["start"], series["types"]
    succeeded, failed = types.get("task-succeeded", []), types.get("task-failed", [])
    minutes: dict[int, list[int]] = {}
    for offset in range(max(len(succeeded), len(failed))):
        row = minutes.setdefault((start + offset) // 60 * 60, [0, 0])
        row[0] += succeeded[offset] if offset < len(succeeded) else 0
        row[1] += failed[offset] if offset < len(failed) else 0
    return [(minute, ok, bad) for minute, (ok, bad) in sorted(minutes.items())]


def percentiles(monitor: Monitor, limit: int = 20) -> list[dict[str, Any]]:
    """Runtime and queue-wait p50/p90/p99 of the busiest task names (from the metrics)."""
    metrics = monitor.metrics
    rows = []
    for name, stats in task_stats(metrics.runtime, metrics.queue_wait).items():
        runtime, wait = stats["runtime"] or {}, stats["queue_wait"] or {}
        rows.append(
            {
                "name": name,
                "count": runtime.get("count", 0),
                "runtime": [runtime.get(key) for key in ("p50", "p90", "p99")],
                "wait": [wait.get(key) for key in ("p50", "p90", "p99")],
            }
        )
    rows.sort(key=lambda row: -row["count"])
    return rows[:limit]


def overview(source: DashboardSource) -> dict[str, Any]:
    """The summary every tick carries: health, counts by state and the charts' series."""
    monitor = source.monitor
    state = monitor.state
    by_state = Counter(map(attrgetter("state"), state.tasks.values()))
    rates = monitor.rates.series(seconds=120)
    return {
        "version": state.event_count,
        "health": health(monitor),
        "tasks": {"total": len(state.tasks), "by_state": {str(k): n for k, n in by_state.items()}},
        "workers": len(state.workers),
        "rates": rates["types"],
        "outcomes": outcomes_per_minute(monitor.rates.series(seconds=600)),
        "percentiles": percentiles(monitor),
    }


def tick_message(source: DashboardSource) -> bytes:
    """The current ``tick`` event, made at most once per half tick whatever the streams."""
    made, message = source.last_tick
    now = time.monotonic()
    if now - made >= source.tick / 2:
        payload = json.dumps(overview(source), separators=(",", ":"), allow_nan=False)
        message = b"event: tick\ndata: " + payload.encode() + b"\n\n"
        source.last_tick = (now, message)
    return message


def dashboard_routes(source: DashboardSource) -> list[Route | Mount]:
    """The dashboard's routes, to mount at the root of the service."""

    async def index(_request: Request) -> Response:
        return secure(FileResponse(STATIC / "index.html", media_type="text/html"))

    def answer(data: Any, status: int = 200) -> Response:
        return secure(JSONResponse(data, status_code=status))

    async def tasks(request: Request) -> Response:
        try:
            query = parse_task_query(request.query_params)
        except BadQuery as error:
            return answer({"error": str(error)}, 400)
        return answer(query_tasks(source.state, query))

    async def task(request: Request) -> Response:
        found = task_detail(source.state, request.path_params["uuid"][:ROW_TEXT])
        return answer(found) if found is not None else answer({"error": "unknown task"}, 404)

    async def workers(_request: Request) -> Response:
        return answer({"workers": workers_table(source.state, source.liveness)})

    async def worker(request: Request) -> Response:
        hostname = request.path_params["hostname"][:ROW_TEXT]
        found = worker_detail(source.state, hostname, source.liveness)
        return answer(found) if found is not None else answer({"error": "unknown worker"}, 404)

    async def summary(_request: Request) -> Response:
        return answer(overview(source))

    async def live(request: Request) -> Response:
        if source.streams >= source.max_streams:
            return answer({"error": "too many live streams open"}, 503)
        response = StreamingResponse(
            _ticks(source, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        return secure(response)

    async def no_icon(_request: Request) -> Response:
        return Response(status_code=204)

    return [
        Route("/", index),
        Route("/favicon.ico", no_icon),
        Route("/api/dashboard/overview", summary),
        Route("/api/dashboard/tasks", tasks),
        Route("/api/dashboard/tasks/{uuid}", task),
        Route("/api/dashboard/workers", workers),
        Route("/api/dashboard/workers/{hostname:path}", worker),
        Route("/api/dashboard/live", live),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]


async def _ticks(source: DashboardSource, request: Request) -> AsyncIterator[bytes]:
    """One ``tick`` event per interval until the client leaves, the service closes or the
    stream's lifetime ends (the browser then reconnects by itself)."""
    source.streams += 1
    try:
        ends = time.monotonic() + source.stream_lifetime
        yield b"retry: 1000\n\n"
        while time.monotonic() < ends and not source.closing.is_set():
            if await request.is_disconnected():
                return
            yield tick_message(source)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(source.closing.wait(), source.tick)
    finally:
        source.streams -= 1
