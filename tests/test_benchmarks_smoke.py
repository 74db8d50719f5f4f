"""The benchmark suite's broker-free parts run on tiny inputs. Nothing here asserts a timing:
only that both systems were measured on the same stream and the report is complete."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, settings_for
from benchmarks.inproc import state_section
from benchmarks.report import TARGETS, ratio_table
from benchmarks.workload import ENVELOPE, make_events, sendable


def test_workload_has_full_lifecycles_failures_retries_and_heartbeats() -> None:
    events = make_events(400, start=1000.0)
    types = {event["type"] for event in events}
    assert {
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "worker-online",
        "worker-heartbeat",
    } <= types
    assert events == make_events(400, start=1000.0)  # seeded: identical for both systems
    for (type_, fields), event in zip(sendable(events), events, strict=True):
        assert type_ == event["type"]
        assert not ENVELOPE & fields.keys()
        assert fields == {key: value for key, value in event.items() if key not in ENVELOPE}


def test_state_section_measures_both_systems_and_reports_every_ratio() -> None:
    settings = settings_for(True, 1, "redis://unused", "amqp://unused")
    settings.state_tasks = 150
    rows = state_section(settings)
    assert [row.target for row in rows] == ["state", None, "receive"]
    for row in rows:
        assert len(row.evcore) == len(row.celery) == 1
        assert row.evcore[0] > 0
        assert row.celery[0] > 0
    table = ratio_table(rows, None)
    assert len(table) == 2 + len(rows)
    assert all(
        TARGETS[row.target].text() in line
        for row, line in zip(rows, table[2:], strict=True)
        if row.target
    )


def test_ratio_table_compares_amqp_dispatch_with_raw_pika() -> None:
    row = Row(
        "1",
        "RabbitMQ, unbatched",
        "events/s",
        [90.0, 110.0],
        [50.0, 50.0],
        target="dispatch-rabbitmq-unbatched",
    )
    lines = ratio_table([row], raw_pika=100.0)
    assert "**2.00x**" in lines[2]
    assert "raw pika" in lines[3]
    assert "**1.00x**" in lines[3]
