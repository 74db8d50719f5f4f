"""What evcore serve adds to the State: liveness, possibly lost tasks, retention, the memory
budget and the state file."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from _serve_support import event, lifecycle, monitor_app
from starlette.testclient import TestClient

from evcore.errors import ConfigurationError
from evcore.serve.monitor import Monitor, MonitorOptions
from evcore.serve.reconcile import Reconciler, open_results
from evcore.state import State
from evcore.state.liveness import (
    LATE,
    OFFLINE,
    ONLINE,
    SILENT_WORKER,
    STREAM_GAP,
    LivenessPolicy,
    liveness,
    purge_offline,
)
from evcore.state.retention import RetentionPolicy, estimate_task_bytes


def test_liveness_windows_on_the_receivers_clock() -> None:
    state = State()
    # The sender's clock is an hour behind: only the receive time counts.
    state.event(event("worker-heartbeat", "w1@example", freq=2.0, at=1000.0, received=5000.0))
    worker = state.workers["w1@example"]
    policy = LivenessPolicy(late_after=1.25, offline_after=2.0)
    assert liveness(worker, policy, now=5002.0).status == ONLINE
    late = liveness(worker, policy, now=5003.0)
    assert (late.status, late.seen_ago, late.lateness) == (LATE, 3.0, 1.0)
    assert liveness(worker, policy, now=5004.1).status == OFFLINE
    wide = LivenessPolicy(late_after=5, offline_after=10)
    assert liveness(worker, wide, now=5009.0).status == ONLINE


def test_worker_offline_event_is_offline_at_once() -> None:
    state = State()
    now = time.time()
    state.event(event("worker-online", "w1@example", freq=2.0, at=now))
    state.event(event("worker-offline", "w1@example", at=now))
    alive = liveness(state.workers["w1@example"], LivenessPolicy(), now=now)
    assert alive.status == OFFLINE
    assert alive.last_seen == now


def test_windows_are_checked() -> None:
    with pytest.raises(ValueError):
        LivenessPolicy(late_after=3, offline_after=2)
    with pytest.raises(ValueError):
        LivenessPolicy(lost_after=-1)


def test_purge_offline_workers() -> None:
    state = State()
    state.event(event("worker-heartbeat", "old@example", freq=2.0, at=100.0))
    state.event(event("worker-heartbeat", "new@example", freq=2.0, at=1000.0))
    purged = purge_offline(state, LivenessPolicy(purge_after=60), now=1001.0)
    assert purged == ["old@example"]
    assert list(state.workers) == ["new@example"]
    assert purge_offline(state, LivenessPolicy(purge_after=None), now=1e9) == []


def test_tasks_on_a_silent_worker_become_possibly_lost_then_recover() -> None:
    monitor, app = monitor_app(liveness=LivenessPolicy(lost_after=5.0))
    now = time.time()
    monitor.apply(
        [
            event("worker-heartbeat", "w1@example", freq=2.0, at=now),
            event("task-received", "w1@example", uuid="running", name="proj.slow", at=now),
            event("task-started", "w1@example", uuid="running", at=now),
            event("task-received", "w1@example", uuid="done", name="proj.add", at=now),
            event("task-succeeded", "w1@example", uuid="done", at=now, runtime=0.1),
        ]
    )
    # Offline from now + 4 s (two intervals), lost 5 s after that.
    assert monitor.sweep(now=now + 8.9) == 0
    assert monitor.sweep(now=now + 9.1) == 1
    assert monitor.losses.lost == {"running": SILENT_WORKER}
    client = TestClient(app)
    info = client.get("/api/task/info/running").json()
    assert info["state"] == "STARTED"  # the state is the events' own
    assert info["possibly_lost"] == SILENT_WORKER
    assert "possibly_lost" not in client.get("/api/task/info/done").json()
    metrics = client.get("/metrics").text
    assert "evcore_tasks_possibly_lost 1.0" in metrics
    assert 'evcore_tasks_marked_lost_total{reason="worker-silent"} 1.0' in metrics
    # The worker comes back and the task finishes: no longer lost.
    monitor.apply([event("task-succeeded", "w1@example", uuid="running", runtime=9.0)])
    assert monitor.losses.lost == {}
    assert monitor.losses.recovered == 1


def test_tasks_before_a_stream_gap_become_possibly_lost() -> None:
    monitor, _ = monitor_app(liveness=LivenessPolicy(lost_after=5.0))
    now = time.time()
    monitor.apply(
        [
            event("worker-heartbeat", "w1@example", freq=60.0, at=now - 1),
            event("task-started", "w1@example", uuid="before", name="proj.x", at=now - 1),
        ]
    )
    monitor.losses.stream_gap("w1@example", now=now)
    monitor.apply([event("task-started", "w1@example", uuid="after", name="proj.x", at=now + 1)])
    assert monitor.sweep(now=now + 4) == 0
    assert monitor.sweep(now=now + 6) == 1
    assert monitor.losses.lost == {"before": STREAM_GAP}


def test_retention_per_state() -> None:
    state = State()
    policy = RetentionPolicy(max_age={"SUCCESS": 60, "FAILURE": 3600})
    for uuid, outcome, at in (
        ("old-ok", "succeeded", 0.0),
        ("old-bad", "failed", 0.0),
        ("new-ok", "succeeded", 3000.0),
    ):
        for item in lifecycle(uuid, at=at, outcome=outcome):
            state.event(item)
    state.event(event("task-started", uuid="old-running", name="proj.x", at=0.0))
    assert policy.expire(state, now=3050.0) == 1
    assert set(state.tasks) == {"old-bad", "new-ok", "old-running"}
    assert policy.expired == {"SUCCESS": 1}
    assert policy.expire(state, now=4000.0) == 2
    assert set(state.tasks) == {"old-running"}
    assert "new-ok" not in state.tasks_by_type["proj.add"]
    with pytest.raises(ValueError):
        RetentionPolicy(max_age={"SUCCESS": 0})


def test_memory_budget_evicts_oldest_and_counts() -> None:
    state = State(max_tasks_in_memory=None)
    for number in range(2000):
        state.event(event("task-received", uuid=f"t{number}", name="proj.add", args="x" * 200))
    full = estimate_task_bytes(state)
    assert 2000 * 400 < full < 2000 * 5000
    policy = RetentionPolicy(memory_budget=full // 2)
    evicted = policy.fit_budget(state)
    assert 900 <= evicted <= 1100
    assert policy.budget_evictions == evicted
    assert estimate_task_bytes(state) <= full // 2
    assert "t1999" in state.tasks and "t0" not in state.tasks  # least recent went first
    # The budget is now also the State's count limit: new tasks evict on arrival.
    limit = state.max_tasks_in_memory
    assert limit is not None and limit == len(state.tasks)
    for number in range(2000, 2500):
        state.event(event("task-received", uuid=f"t{number}", name="proj.add", args="x" * 200))
    assert len(state.tasks) == limit
    assert estimate_task_bytes(state) <= full // 2
    assert policy.fit_budget(state) == 0


def test_state_file_saved_on_stop_and_restored_with_limits(tmp_path: Path, bus_url: str) -> None:
    path = tmp_path / "state.json"
    monitor = Monitor(bus_url, MonitorOptions(state_file=path, max_tasks=100))
    for number in range(50):
        monitor.apply(lifecycle(f"t{number}", at=1000.0 + number))
    monitor.save()
    saved = json.loads(path.read_text())
    assert (saved["format"], saved["state"]["format"]) == ("evcore.checkpoint", "evcore.state")
    assert saved["positions"] == {}  # pub/sub: nothing to resume from
    restored = Monitor(bus_url, MonitorOptions(state_file=path, max_tasks=10))
    assert len(restored.state.tasks) == 10  # the new limit is applied
    assert "t49" in restored.state.tasks
    assert restored.state.max_tasks_in_memory == 10
    # Tasks restored unfinished are tracked: their silent worker makes them possibly lost.
    restored.apply([event("task-started", "w9@example", uuid="stuck", name="p.x", at=1000.0)])
    restored.save()
    again = Monitor(bus_url, MonitorOptions(state_file=path, max_tasks=10))
    assert again.losses.unfinished("w9@example") == 1
    assert again.sweep() == 1


def test_a_bare_state_snapshot_is_restored_too(tmp_path: Path) -> None:
    """Files written before the state file became a checkpoint hold the State alone."""
    state = State()
    for item in lifecycle("old", at=1000.0):
        state.event(item)
    path = tmp_path / "state.json"
    path.write_text(state.to_json())
    monitor = Monitor(None, MonitorOptions(state_file=path))
    assert monitor.state.tasks["old"].state == "SUCCESS"
    assert monitor.positions == {}


def test_a_bad_state_file_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    for text in ("{not json", '{"format": "evcore.state", "version": 1, "tasks": [{}]}'):
        path.write_text(text)
        monitor = Monitor(None, MonitorOptions(state_file=path))
        assert len(monitor.state.tasks) == 0


def test_housekeeping_runs_purge_and_retention() -> None:
    monitor, _ = monitor_app(
        liveness=LivenessPolicy(purge_after=10),
        retention=RetentionPolicy(max_age={"SUCCESS": 10}),
    )
    monitor.apply(lifecycle("a", at=1000.0))
    monitor.apply([event("worker-heartbeat", "gone@example", freq=2.0, at=1000.0)])
    monitor.housekeeping(now=2000.0)
    assert "gone@example" not in monitor.state.workers
    assert "a" not in monitor.state.tasks
    assert monitor.purged == 2  # w1 and gone


class StoredResults:
    """A result source over a dict of raw documents (the backend's side is tested on a real
    Redis in integration/test_serve_celery.py)."""

    def __init__(self, documents: dict[str, bytes]) -> None:
        self.documents = documents

    def fetch(self, task_ids: Sequence[str]) -> Mapping[str, bytes]:
        return {uuid: self.documents[uuid] for uuid in task_ids if uuid in self.documents}

    def close(self) -> None:
        self.documents.clear()


def test_reconciliation_takes_only_final_well_formed_documents() -> None:
    monitor, app = monitor_app(liveness=LivenessPolicy(lost_after=0))
    silent = time.time() - 60
    names = ["ok", "revoked", "pending", "junk", "huge", "list", "nostatus"]
    monitor.apply([event("worker-heartbeat", "ghost@x", freq=2.0, at=silent)])
    monitor.apply(
        [event("task-started", "ghost@x", uuid=name, name="p.x", at=silent) for name in names]
    )
    assert monitor.sweep() == len(names)
    documents = {
        "ok": b'{"status": "SUCCESS", "result": [1, 2], "date_done": "2026-01-01T00:00:00"}',
        "revoked": b'{"status": "REVOKED", "result": null}',
        "pending": b'{"status": "STARTED", "result": null}',
        "junk": b"\x80not json",
        "huge": b'{"status": "SUCCESS", "result": "' + b"x" * 2_000_000 + b'"}',
        "list": b"[1, 2]",
        "nostatus": b'{"result": 1}',
    }
    monitor.reconciler = Reconciler(StoredResults(documents))
    assert asyncio.run(monitor.reconcile()) == 2
    tasks = monitor.state.tasks
    assert (tasks["ok"].state, tasks["ok"].result) == ("SUCCESS", "[1, 2]")
    assert tasks["ok"].succeeded == 1767225600.0  # date_done, UTC
    assert tasks["revoked"].state == "REVOKED"
    assert set(monitor.losses.lost) == {"pending", "junk", "huge", "list", "nostatus"}
    info = TestClient(app).get("/api/task/info/ok").json()
    assert info["reconciled"] is True and "possibly_lost" not in info
    assert "reconciled" not in TestClient(app).get("/api/task/info/pending").json()


def test_only_redis_result_backends() -> None:
    with pytest.raises(ConfigurationError, match="only redis"):
        open_results("db+postgresql://localhost/results")
