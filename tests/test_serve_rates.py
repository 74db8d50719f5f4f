"""What the dashboard's charts draw: events per second by type, percentiles per task name."""

from __future__ import annotations

import time

from _serve_support import lifecycle, monitor_app
from starlette.testclient import TestClient

from evcore.serve.metrics import OVERFLOW, HistogramSeries, LabelCap
from evcore.serve.rates import EventRates, per_name, percentile


def test_rates_per_second_and_type_within_the_window() -> None:
    rates = EventRates(window=10)
    for second, type_ in [
        (100, "task-received"),
        (100, "task-received"),
        (101, "task-failed"),
        (103, "custom-x"),
    ]:
        rates.count(type_, now=second + 0.5)
    recent = rates.series(now=105, seconds=6)
    assert recent["start"] == 100
    assert recent["types"] == {
        "task-received": [2, 0, 0, 0, 0, 0],
        "task-failed": [0, 1, 0, 0, 0, 0],
        "other": [0, 0, 0, 1, 0, 0],
    }
    # Seconds older than the window are dropped once newer ones arrive.
    rates.count("task-received", now=120.5)
    assert rates.series(now=120, seconds=30)["types"] == {"task-received": [0] * 9 + [1]}


def test_percentiles_interpolate_inside_buckets() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert percentile(bounds, [0, 0, 0, 0], 0.5) is None
    assert percentile(bounds, [10, 0, 0, 0], 0.5) == 0.5
    assert percentile(bounds, [0, 10, 0, 0], 0.9) == 1.9
    assert percentile(bounds, [5, 0, 5, 0], 0.99) == 2.0 + 2.0 * 0.98
    assert percentile(bounds, [0, 0, 0, 3], 0.5) == 4.0  # the top bucket: its lower bound


def test_per_name_merges_hosts_and_leaves_the_overflow_out() -> None:
    series = HistogramSeries((1.0, 2.0), LabelCap(2, 3))
    series.observe(("a", "w1", "q"), 0.5)
    series.observe(("a", "w2", "q"), 1.5)
    series.observe(("b", "w1", "q"), 1.5)  # past the cap: the overflow series
    stats = per_name(series)
    assert list(stats) == ["a"]
    assert stats["a"]["count"] == 2
    assert stats["a"]["mean"] == 1.0
    assert OVERFLOW not in stats


def test_stats_endpoints() -> None:
    monitor, app = monitor_app()
    now = time.time()
    for number in range(10):
        monitor.apply(lifecycle(f"t{number}", "proj.add", at=now - 20, runtime=0.3))
    client = TestClient(app)
    stats = client.get("/api/stats/tasks").json()
    assert stats["proj.add"]["runtime"]["count"] == 10
    assert 0.25 < stats["proj.add"]["runtime"]["p50"] <= 0.5
    assert stats["proj.add"]["queue_wait"]["count"] == 10
    rates = client.get("/api/stats/rates?seconds=5").json()
    assert sum(rates["types"]["task-received"]) == 10
    assert client.get("/api/stats/rates?seconds=x").status_code == 400
