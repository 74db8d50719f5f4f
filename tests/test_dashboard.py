"""The dashboard's views, endpoints and live stream, on a State fed by hand (no broker)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")

from starlette.applications import Starlette
from starlette.testclient import TestClient

from evcore.serve.dashboard import (
    DashboardSource,
    dashboard_routes,
    outcomes_per_minute,
    overview,
)
from evcore.serve.monitor import Monitor
from evcore.serve.views import TaskQuery, query_tasks, task_detail, worker_row
from evcore.state import State
from evcore.state.liveness import LivenessPolicy

STATIC = Path(__file__).parent.parent / "evcore" / "serve" / "static"
_clock = itertools.count(1)
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def ev(type_: str, hostname: str = "w1@h", when: float | None = None, **fields: Any) -> dict:
    now = time.time() if when is None else when
    return {
        "hostname": hostname,
        "utcoffset": 0,
        "pid": 1,
        "clock": next(_clock),
        "timestamp": now,
        "local_received": now,
        "type": type_,
        **fields,
    }


def lifecycle(
    monitor: Monitor, uuid: str, name: str, worker: str, start: float, **end: Any
) -> None:
    outcome = end.pop("outcome", "succeeded")
    feed = monitor.apply
    feed([ev("task-received", worker, start, uuid=uuid, name=name, args="(1,)", **end)])
    feed([ev("task-started", worker, start + 0.5, uuid=uuid)])
    feed(
        [
            ev(
                f"task-{outcome}",
                worker,
                start + 2.5,
                uuid=uuid,
                runtime=2.0,
                exception="ValueError('boom')" if outcome == "failed" else None,
            )
        ]
    )


@pytest.fixture
def monitor() -> Monitor:
    monitor = Monitor()
    state = monitor.state
    base = 1_700_000_000.0
    state.event(ev("worker-online", "w1@h", freq=2.0))
    state.event(ev("worker-online", "w2@h", freq=2.0))
    lifecycle(monitor, "a1", "app.add", "w1@h", base)
    lifecycle(monitor, "a2", "app.add", "w2@h", base + 10, outcome="failed")
    lifecycle(monitor, "b1", "app.mul", "w1@h", base + 20, parent_id="a1", root_id="a1")
    state.event(
        ev(
            "task-received",
            "w2@h",
            base + 30,
            uuid="x1",
            name="app.evil",
            args=HOSTILE,
            kwargs="{}",
        )
    )
    return monitor


@pytest.fixture
def state(monitor: Monitor) -> State:
    return monitor.state


def test_filters_search_sort_and_pages(state: State) -> None:
    def uuids(**query: Any) -> list[str]:
        return [row["uuid"] for row in query_tasks(state, TaskQuery(**query))["tasks"]]

    assert uuids() == ["x1", "b1", "a2", "a1"]
    assert uuids(descending=False) == ["a1", "a2", "b1", "x1"]
    assert uuids(state="FAILURE") == ["a2"]
    assert uuids(name="app.add") == ["a2", "a1"]
    assert uuids(worker="w1@h") == ["b1", "a1"]
    assert uuids(search="SCRIPT") == ["x1"]
    assert uuids(since=1_700_000_005, until=1_700_000_025) == ["b1", "a2"]
    assert uuids(sort="name", descending=False)[2:] == ["x1", "b1"]
    assert uuids(sort="runtime")[-1] == "x1"  # no runtime sorts last
    page = query_tasks(state, TaskQuery(offset=1, limit=2))
    assert page["total"] == 4
    assert [row["uuid"] for row in page["tasks"]] == ["b1", "a2"]


def test_task_page_links_timeline_and_wait(state: State) -> None:
    child = task_detail(state, "b1")
    assert child is not None
    assert child["parent"]["uuid"] == "a1"
    assert [step["stage"] for step in child["timeline"]] == ["received", "started", "succeeded"]
    assert child["wait"] == pytest.approx(0.5)
    parent = task_detail(state, "a1")
    assert parent is not None
    assert [link["uuid"] for link in parent["children"]] == ["b1"]
    assert task_detail(state, "nope") is None


def test_long_strings_are_cut(state: State) -> None:
    state.event(ev("task-received", "w1@h", uuid="big", name="n" * 5000, args="a" * 200_000))
    row = query_tasks(state, TaskQuery(search="big"))["tasks"][0]
    assert len(row["name"]) == 200 and row["name"].endswith("\u2026")
    detail = task_detail(state, "big")
    assert detail is not None and len(detail["args"]) == 64 * 1024


def test_worker_rows_use_the_liveness_windows() -> None:
    state = State()
    state.event(ev("worker-heartbeat", "w@h", when=1000.0, freq=2.0, local_received=1000.0))
    worker = state.workers["w@h"]
    policy = LivenessPolicy()
    assert worker_row(worker, 1001.0, policy)["status"] == "online"
    assert worker_row(worker, 1003.0, policy)["status"] == "late"
    row = worker_row(worker, 1000.0 + 100, policy)
    assert row["status"] == "offline" and row["seen_ago"] == pytest.approx(100.0)


def test_the_summary_reads_the_monitors_rates_stats_and_health() -> None:
    monitor = Monitor()
    monitor.apply(
        [
            ev("task-received", uuid="t", name="n"),
            ev("task-started", uuid="t"),
            ev("task-succeeded", uuid="t", runtime=0.2),
            {"type": 5},
        ]
    )
    monitor.state.record_loss("w1@h", 3)
    summary = overview(DashboardSource(monitor))
    assert summary["health"]["lost"] == 3
    assert summary["health"]["rejected"] >= 1  # the event without a usable type
    assert summary["health"]["connected"]  # fed by hand: no receiver to lose
    assert {"task-received", "task-started", "task-succeeded"} <= set(summary["rates"])
    assert [row["name"] for row in summary["percentiles"]] == ["n"]
    assert sum(row[1] for row in summary["outcomes"]) == 1


def test_outcomes_are_summed_per_minute() -> None:
    series = {"start": 119, "types": {"task-succeeded": [1, 2, 3], "task-failed": [0, 1]}}
    assert outcomes_per_minute(series) == [(60, 1, 0), (120, 5, 1)]


def client_for(monitor: Monitor, **options: Any) -> tuple[TestClient, DashboardSource]:
    source = DashboardSource(monitor, **options)
    return TestClient(Starlette(routes=dashboard_routes(source))), source


def test_endpoints_answer_json_with_a_strict_policy(monitor: Monitor) -> None:
    monitor.state.record_loss("w9@h", 7)
    client, _ = client_for(monitor)
    page = client.get("/")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    tasks = client.get("/api/dashboard/tasks", params={"q": "app.evil"}).json()
    assert tasks["tasks"][0]["args"] == HOSTILE  # data, for the page to show as text
    assert client.get("/api/dashboard/tasks/a2").json()["exception"] == "ValueError('boom')"
    assert client.get("/api/dashboard/tasks/none").status_code == 404
    assert client.get("/api/dashboard/workers/w1@h").json()["tasks_total"] == 2
    overview = client.get("/api/dashboard/overview").json()
    assert overview["health"] == {"connected": True, "lost": 7, "rejected": 0, "possibly_lost": 0}
    assert overview["tasks"]["by_state"]["FAILURE"] == 1


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "ten"},
        {"offset": "-1"},
        {"q": "x" * 201},
        {"since": "nan"},
        {"order": "up"},
        {"until": "1e999"},
    ],
)
def test_bad_queries_are_refused_with_the_reason(monitor: Monitor, query: dict[str, str]) -> None:
    client, _ = client_for(monitor)
    answer = client.get("/api/dashboard/tasks", params=query)
    assert answer.status_code == 400
    assert answer.json()["error"]


def test_path_traversal_stays_inside_the_static_folder(monitor: Monitor) -> None:
    client, _ = client_for(monitor)
    assert client.get("/static/dashboard.js").status_code == 200
    for path in (
        "/static/../dashboard.py",
        "/static/%2e%2e/dashboard.py",
        "/static/..%2fdashboard.py",
    ):
        assert client.get(path).status_code == 404


def test_live_stream_sends_ticks_and_ends(monitor: Monitor) -> None:
    client, source = client_for(monitor, tick=0.05, stream_lifetime=0.3)
    with client.stream("GET", "/api/dashboard/live") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = b"".join(response.iter_bytes())
    ticks = [chunk for chunk in body.split(b"\n\n") if chunk.startswith(b"event: tick")]
    assert len(ticks) >= 2
    data = json.loads(ticks[0].split(b"data: ", 1)[1])
    assert data["version"] == monitor.state.event_count
    assert source.streams == 0


def test_live_streams_are_capped(monitor: Monitor) -> None:
    client, source = client_for(monitor, max_streams=0)
    assert client.get("/api/dashboard/live").status_code == 503
    assert source.streams == 0


def test_the_page_inserts_event_text_only_as_text() -> None:
    script = (STATIC / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    page = (STATIC / "index.html").read_text()
    assert "<script>" not in page and "style=" not in page  # nothing inline for the CSP
