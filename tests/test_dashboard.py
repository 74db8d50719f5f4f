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

from evcore.serve.activity import OTHER, Activity, percentile
from evcore.serve.dashboard import (
    DashboardSource,
    Health,
    dashboard_routes,
    monitor_dashboard,
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


def lifecycle(state: State, uuid: str, name: str, worker: str, start: float, **end: Any) -> None:
    outcome = end.pop("outcome", "succeeded")
    state.event(ev("task-received", worker, start, uuid=uuid, name=name, args="(1,)", **end))
    state.event(ev("task-started", worker, start + 0.5, uuid=uuid))
    state.event(
        ev(
            f"task-{outcome}",
            worker,
            start + 2.5,
            uuid=uuid,
            runtime=2.0,
            exception="ValueError('boom')" if outcome == "failed" else None,
        )
    )


@pytest.fixture
def state() -> State:
    state = State()
    base = 1_700_000_000.0
    state.event(ev("worker-online", "w1@h", freq=2.0))
    state.event(ev("worker-online", "w2@h", freq=2.0))
    lifecycle(state, "a1", "app.add", "w1@h", base)
    lifecycle(state, "a2", "app.add", "w2@h", base + 10, outcome="failed")
    lifecycle(state, "b1", "app.mul", "w1@h", base + 20, parent_id="a1", root_id="a1")
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
    return state


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


def test_monitor_feeds_the_charts_and_the_banner() -> None:
    monitor = Monitor()
    source = monitor_dashboard(monitor)
    monitor.apply(
        [
            ev("task-received", uuid="t", name="n"),
            ev("task-started", uuid="t"),
            ev("custom-thing"),
            {"type": 5},
        ]
    )
    monitor.state.record_loss("w1@h", 3)
    summary = overview(source)
    assert summary["health"]["lost"] == 3
    assert summary["health"]["rejected"] >= 1  # the event without a usable type
    counted = set(source.activity.rates())  # every type seen has a series
    assert {"task-received", "task-started", "custom-thing"} <= counted
    assert [row.name for row in source.activity.percentiles()] == ["n"]


def test_activity_rates_outcomes_percentiles_and_caps() -> None:
    now = [10_000.5]
    activity = Activity(seconds=5, minutes=2, max_types=2, max_names=2, clock=lambda: now[0])
    for kind in ("task-succeeded", "task-failed", "custom-1", "custom-2"):
        activity.observe(kind, name="t", runtime=1.0)
    activity.observe("task-started", name="t", wait=0.25)
    now[0] += 1
    rates = activity.rates()
    assert set(rates) == {"task-succeeded", "task-failed", OTHER}
    assert rates[OTHER][-1] == 3 and rates["task-failed"][-1] == 1
    assert activity.outcomes()[-1][1:] == (1, 1)
    for name in ("u", "v", "w"):
        activity.observe("task-succeeded", name=name, runtime=float("nan"))
        activity.observe("task-succeeded", name=name, runtime=3.0)
    names = [row.name for row in activity.percentiles()]
    assert len(names) == 2 and OTHER in names
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


def client_for(state: State, **options: Any) -> tuple[TestClient, DashboardSource]:
    source = DashboardSource(state, Activity(), health=lambda: Health(False, 7, 2), **options)
    return TestClient(Starlette(routes=dashboard_routes(source))), source


def test_endpoints_answer_json_with_a_strict_policy(state: State) -> None:
    client, _ = client_for(state)
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
    assert overview["health"] == {"connected": False, "lost": 7, "rejected": 2, "possibly_lost": 0}
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
def test_bad_queries_are_refused_with_the_reason(state: State, query: dict[str, str]) -> None:
    client, _ = client_for(state)
    answer = client.get("/api/dashboard/tasks", params=query)
    assert answer.status_code == 400
    assert answer.json()["error"]


def test_path_traversal_stays_inside_the_static_folder(state: State) -> None:
    client, _ = client_for(state)
    assert client.get("/static/dashboard.js").status_code == 200
    for path in (
        "/static/../dashboard.py",
        "/static/%2e%2e/dashboard.py",
        "/static/..%2fdashboard.py",
    ):
        assert client.get(path).status_code == 404


def test_live_stream_sends_ticks_and_ends(state: State) -> None:
    client, source = client_for(state, tick=0.05, stream_lifetime=0.3)
    with client.stream("GET", "/api/dashboard/live") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = b"".join(response.iter_bytes())
    ticks = [chunk for chunk in body.split(b"\n\n") if chunk.startswith(b"event: tick")]
    assert len(ticks) >= 2
    data = json.loads(ticks[0].split(b"data: ", 1)[1])
    assert data["version"] == state.event_count
    assert source.streams == 0


def test_live_streams_are_capped(state: State) -> None:
    client, source = client_for(state, max_streams=0)
    assert client.get("/api/dashboard/live").status_code == 503
    assert source.streams == 0


def test_the_page_inserts_event_text_only_as_text() -> None:
    script = (STATIC / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    page = (STATIC / "index.html").read_text()
    assert "<script>" not in page and "style=" not in page  # nothing inline for the CSP
