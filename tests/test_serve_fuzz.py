"""Hostile events through the service: the State, the metrics, the loss tracker, the
recent index and every endpoint keep working, and the label sets stay bounded."""

from __future__ import annotations

from typing import Any

from _fuzz_strategies import events
from _serve_support import monitor_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

PATHS = (
    "/metrics",
    "/api/tasks",
    "/api/tasks?sort_by=-started",
    "/api/tasks?sort_by=name&state=FAILURE",
    "/api/tasks?search=x",
    "/api/task/types",
    "/api/workers",
    "/api/evcore",
    "/readyz",
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(events(), max_size=40))
def test_hostile_events_never_break_an_endpoint(batch: list[dict[str, Any]]) -> None:
    monitor, app = monitor_app(max_label_sets=10, max_tasks=20, max_workers=5)
    monitor.apply(batch)
    monitor.sweep()
    monitor.housekeeping()
    client = TestClient(app)
    for path in PATHS:
        response = client.get(path)
        assert response.status_code in (200, 503), (path, response.text[:200])
    for uuid in list(monitor.state.tasks)[:3]:
        assert client.get("/api/task/info/" + uuid).status_code in (200, 404)
    families = text_string_to_metric_families(client.get("/metrics").text)
    for family in families:
        label_sets = {
            tuple(sorted(s.labels.items())) for s in family.samples if "le" not in s.labels
        }
        # 10 label sets per metric plus the overflow series (rejection reasons are a fixed
        # list of a dozen), whatever the events named
        assert len(label_sets) <= 11 + 5, family.name
