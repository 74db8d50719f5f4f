"""Unit tests of evcore.state: queries, merges, compat differences, limits, snapshots, camera."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from evcore.state import (
    PENDING,
    RECEIVED,
    REJECTED,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    Camera,
    Polaroid,
    State,
    Task,
    Worker,
    heartbeat_expires,
    precedence,
)
from evcore.state.snapshot import SnapshotError

#: Real Celery 5.7 messages kept in the repository (data/wire-samples/README.md).
SAMPLES = Path(__file__).resolve().parent / "data" / "wire-samples"

_clock = iter(range(1, 10**9))


def ev(type_: str, hostname: str = "w1@h", **fields: Any) -> dict[str, Any]:
    """An event as a receiver hands it over (clock, timestamp and local_received set)."""
    now = fields.pop("timestamp", time.time())
    event = {
        "hostname": hostname,
        "utcoffset": 0.0,
        "pid": 10,
        "clock": fields.pop("clock", next(_clock)),
        **fields,
        "timestamp": now,
        "type": type_,
    }
    event.setdefault("local_received", fields.get("local_received", now))
    return event


def task_ev(
    subject: str, uuid: str = "u1", hostname: str = "w1@h", **fields: Any
) -> dict[str, Any]:
    return ev(f"task-{subject}", hostname, uuid=uuid, **fields)


# -- merges (reference §11 test vectors) ---------------------------------------------------


def test_late_received_and_started_after_success() -> None:
    state = State()
    state.event(task_ev("succeeded", clock=5, timestamp=105.0))
    state.event(task_ev("received", name="add", clock=2, timestamp=102.0))
    task = state.tasks["u1"]
    assert (task.state, task.name, task.received, task.clock) == (SUCCESS, "add", 102.0, 5)
    state.event(task_ev("started", clock=3, timestamp=103.0))
    assert (task.state, task.clock, task.timestamp, task.started) == (SUCCESS, 3, 103.0, 103.0)


def test_retry_then_started_progress_and_cancelled() -> None:
    state = State()
    state.event(task_ev("retried"))
    state.event(task_ev("started"))
    assert state.tasks["u1"].state == STARTED
    state.event(task_ev("progress", current=3, total=10))
    task = state.tasks["u1"]
    assert (task.state, task.current, task.total) == ("PROGRESS", 3, 10)
    assert task.extra_fields == {"current": 3, "total": 10}
    state.event(task_ev("cancelled", uuid="u2"))
    assert state.tasks["u2"].state == "CANCELLED"


def test_rejected_after_started_celery_and_terminal_orderings() -> None:
    celery_like, terminal = State(), State(ordering="terminal")
    for state in (celery_like, terminal):
        state.event(task_ev("started", clock=1))
        state.event(task_ev("rejected", clock=2, requeue=False))
    assert celery_like.tasks["u1"].state == STARTED
    assert terminal.tasks["u1"].state == REJECTED


def test_terminal_ordering_final_states_win() -> None:
    state = State(ordering="terminal")
    state.event(task_ev("succeeded", clock=5, timestamp=105.0))
    state.event(task_ev("retried", clock=3, timestamp=103.0))
    state.event(task_ev("started", clock=4, timestamp=104.0))
    task = state.tasks["u1"]
    assert (task.state, task.clock, task.timestamp, task.retried) == (SUCCESS, 5, 105.0, 103.0)
    state.event(task_ev("progress", uuid="u2", current=1))
    state.event(task_ev("revoked", uuid="u2", terminated=True))
    assert state.tasks["u2"].state == REVOKED  # Celery keeps PROGRESS


def test_terminal_ordering_requeued_rejection_moves_on() -> None:
    state = State(ordering="terminal")
    state.event(task_ev("started"))
    state.event(task_ev("rejected", requeue=True))
    assert state.tasks["u1"].state == REJECTED
    state.event(task_ev("received", name="add"))
    assert state.tasks["u1"].state == RECEIVED


def test_unknown_ordering_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown ordering"):
        State(ordering="newest")


def test_precedence_table() -> None:
    assert [precedence(s) for s in (SUCCESS, "PROGRESS", REVOKED, STARTED, RETRY, PENDING)] == [
        0,
        2,
        3,
        4,
        7,
        8,
    ]


def test_event_dict_is_not_modified() -> None:
    event = task_ev("received", name="add")
    copy = dict(event)
    State().event(event)
    assert event == copy


# -- workers -------------------------------------------------------------------------------


def test_worker_online_liveness_and_fields() -> None:
    state = State()
    (worker, created), subject = state.event(
        ev(
            "worker-online",
            freq=2.0,
            active=0,
            processed=3,
            loadavg=[0.1, 0.2, 0.3],
            sw_ident="py-celery",
            sw_ver="5.7.0",
            sw_sys="Linux",
        )
    )
    assert (created, subject) == (True, "online")
    assert worker.alive and worker.status_string == "ONLINE"
    assert worker.heartbeat_expires - worker.heartbeats[-1] == 4.0
    assert (worker.pid, worker.sw_ver, worker.processed, worker.id) == (10, "5.7.0", 3, "w1@h.10")
    assert worker.type == "worker-online"
    assert list(state.alive_workers()) == [worker]
    state.event(ev("worker-offline"))
    assert worker.heartbeats == [] and not worker.alive and worker.heartbeat_expires is None
    assert "w1@h" in state.workers and list(state.alive_workers()) == []


def test_heartbeats_keep_four_sorted() -> None:
    worker = Worker("w1@h", freq=2.0)
    for received in (5.0, 1.0, 3.0, 4.0, 6.0, 2.0):
        worker.event("heartbeat", timestamp=received, local_received=received)
    assert worker.heartbeats == [2.0, 4.0, 5.0, 6.0]


def test_on_node_join_and_leave_pop_the_worker() -> None:
    joined: list[str] = []
    left: list[str] = []
    state = State(
        on_node_join=lambda w: joined.append(w.hostname),
        on_node_leave=lambda w: left.append(w.hostname),
    )
    state.event(ev("worker-online"))
    state.event(ev("worker-heartbeat"))
    state.event(ev("worker-offline"))
    assert (joined, left, list(state.workers)) == (["w1@h"], ["w1@h"], [])
    (worker, created), _ = state.event(ev("worker-offline", "w9@h"))  # unknown: transient
    assert not created and worker.hostname == "w9@h" and "w9@h" not in state.workers


def test_worker_seen_through_task_events() -> None:
    state = State()
    state.event(task_ev("started", local_received=time.time(), timestamp=time.time() - 1))
    worker = state.workers["w1@h"]
    assert worker.freq == 60 and worker.alive
    assert worker.heartbeats == [state.tasks["u1"].local_received]  # compat: local_received


def test_heartbeat_expires_function() -> None:
    assert heartbeat_expires(10.0, freq=2.0) == 14.0
    assert heartbeat_expires(10.0) == 130.0


# -- tasks ---------------------------------------------------------------------------------


def test_task_sent_only_has_client_origin_and_worker_query() -> None:
    state = State()
    (task, created), subject = state.event(task_ev("sent", hostname="gen5@c", name="add"))
    assert (created, subject, task.state) == (True, "sent", PENDING)
    assert (task.client, task.worker, task.origin) == ("gen5@c", None, "gen5@c")
    assert set(state.tasks_by_worker["gen5@c"]) == {task}
    assert list(state.tasks_by_worker("gen5@c")) == [("u1", task)]  # Celery: AttributeError


def test_first_event_not_received_still_indexed() -> None:
    state = State()
    state.event(task_ev("succeeded", clock=5))
    assert "add" not in state.tasks_by_type
    state.event(task_ev("received", name="add", clock=2))
    task = state.tasks["u1"]
    assert task in state.tasks_by_type["add"] and task in state.tasks_by_worker["w1@h"]
    assert state.task_types() == ["add"]


def test_indexes_follow_client_and_worker() -> None:
    state = State()
    state.event(task_ev("sent", hostname="gen5@c", name="add"))
    state.event(task_ev("received", hostname="w1@h", name="add"))
    assert set(state.tasks_by_worker) == {"gen5@c", "w1@h"}
    state.event(task_ev("received", hostname="w2@h", name="add"))  # redelivered elsewhere
    assert set(state.tasks_by_worker) == {"gen5@c", "w2@h"}
    assert len(state.tasks_by_type["add"]) == 1 and "u1" in state.tasks_by_type["add"]


def test_parent_arriving_after_child_finds_it() -> None:
    state = State()
    state.event(task_ev("sent", uuid="child", hostname="gen5@c", name="c", parent_id="parent"))
    child = state.tasks["child"]
    assert child.parent is None  # not there yet
    state.event(task_ev("received", uuid="parent", name="p"))
    parent = state.tasks["parent"]
    assert child.parent is parent  # Celery caches the None
    assert parent.children == {child}
    assert parent.as_dict()["children"] == ["child"]
    state.event(task_ev("received", uuid="child2", name="c", parent_id="parent", root_id="parent"))
    assert {t.uuid for t in parent.children} == {"child", "child2"}
    assert state.tasks["child2"].root is parent


def test_task_info_as_dict_and_repr() -> None:
    state = State()
    state.event(task_ev("received", name="add", args="(1, 2)", kwargs="{}", retries=0, eta=None))
    state.event(task_ev("succeeded", result="3", runtime=0.5))
    task = state.tasks["u1"]
    assert task.info() == {
        "args": "(1, 2)",
        "kwargs": "{}",
        "retries": 0,
        "result": "3",
        "runtime": 0.5,
    }
    assert task.info(fields=["result"], extra=["name"]) == {"result": "3", "name": "add"}
    data = task.as_dict()
    assert list(data) == list(Task._fields) and data["worker"] == "w1@h"
    json.dumps(data)
    assert task.ready and task.id == "u1" and task.origin == "w1@h.None"
    assert repr(task) == f"<Task: add(u1) SUCCESS clock:{task.clock}>"
    with pytest.raises(AttributeError):
        _ = task.no_such_field


# -- rejections ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (
            {
                "type": "task-started",
                "hostname": "w",
                "timestamp": 1.0,
                "local_received": 1.0,
                "clock": 1,
            },
            "missing-uuid",
        ),
        (task_ev("started", timestamp="yesterday"), "bad-timestamp"),
        (task_ev("started", clock="3"), "bad-clock"),
        ({k: v for k, v in task_ev("started").items() if k != "clock"}, "missing-clock"),
        (task_ev("started", uuid=None), "bad-uuid"),
        (task_ev("started", local_received="now"), "bad-local_received"),
        ({"hostname": "w"}, "missing-type"),
        ({"type": 5}, "bad-type"),
        (None, "not-an-event"),
        (
            {k: v for k, v in ev("worker-online").items() if k != "local_received"},
            "missing-local_received",
        ),
        (ev("worker-online", freq="2"), "bad-freq"),
    ],
)
def test_bad_events_are_counted_not_raised(event: Any, reason: str) -> None:
    state = State()
    assert state.event(event) is None
    assert state.rejected == {reason: 1}
    assert state.event_count == 1 and not state.tasks


def test_clock_none_is_accepted_like_celery() -> None:
    state = State()
    state.event(task_ev("started", clock=None, timestamp=5.0))
    state.event(task_ev("started", uuid="u2", clock=7))
    assert [u for u, _ in state.tasks_by_time()] == ["u2", "u1"]
    assert state.rejected == {}


def test_other_groups_and_custom_handlers() -> None:
    seen: list[tuple[str, Any]] = []
    state = State(callback=lambda s, e: seen.append(("callback", e["type"])))
    assert state.event(ev("custom-phase", phase="probe")) is None
    state.handlers["custom"] = lambda subject, event: seen.append(("custom", subject)) or 42
    assert state.event(ev("custom-phase")) == (42, "phase")
    assert seen == [("callback", "custom-phase"), ("callback", "custom-phase"), ("custom", "phase")]
    assert state.event_count == 2 and state.rejected == {}


# -- queries -------------------------------------------------------------------------------


def _busy_state() -> State:
    state = State()
    for index, (name, host) in enumerate(
        [("add", "w1@h"), ("mul", "w1@h"), ("add", "w2@h"), ("add", "w1@h")]
    ):
        uuid = f"t{index}"
        state.event(task_ev("received", uuid, host, name=name, clock=10 * index + 1))
        state.event(task_ev("started", uuid, host, clock=10 * index + 2))
    state.event(task_ev("succeeded", "t0", "w1@h", clock=100))
    return state


def test_tasks_by_type_and_worker_queries() -> None:
    state = _busy_state()
    assert {t.uuid for t in state.tasks_by_type["add"]} == {"t0", "t2", "t3"}
    assert [u for u, _ in state.tasks_by_type("add")] == ["t0", "t3", "t2"]
    assert [u for u, _ in state.tasks_by_type("add", limit=1)] == ["t0"]
    assert [u for u, _ in state.tasks_by_type("add", reverse=False)] == ["t0", "t2", "t3"]
    assert [u for u, _ in state.tasks_by_worker("w1@h")] == ["t0", "t3", "t1"]
    assert len(state.tasks_by_worker["nobody"]) == 0 and "nobody" not in state.tasks_by_worker
    assert sorted(state.tasks_by_type) == ["add", "mul"]


def test_time_itertasks_counts_and_types() -> None:
    state = _busy_state()
    assert [u for u, _ in state.tasks_by_time()] == ["t0", "t3", "t2", "t1"]
    assert [u for u, _ in state.tasks_by_time(limit=2)] == ["t0", "t3"]
    assert [u for u, _ in state.tasks_by_timestamp(reverse=False)] == ["t0", "t1", "t2", "t3"]
    assert [u for u, _ in state.itertasks()] == ["t0", "t1", "t2", "t3"]
    assert [u for u, _ in state.itertasks(limit=2)] == ["t0", "t1"]
    assert (state.event_count, state.task_count) == (9, 4)
    assert state.task_types() == ["add", "mul"]
    assert repr(state) == "<State: events=9 tasks=4>"


def test_get_or_create() -> None:
    state = State(max_workers_in_memory=2)
    worker, created = state.get_or_create_worker("w1@h", freq=5.0)
    assert created and worker.freq == 5.0
    state.get_or_create_worker("w2@h")
    again, created = state.get_or_create_worker("w1@h", pid=42)
    assert again is worker and not created and worker.id == "w1@h.42"
    state.get_or_create_worker("w3@h")  # evicts w2, the least recently used
    assert list(state.workers) == ["w1@h", "w3@h"] and state.evictions["workers"] == 1
    task, created = state.get_or_create_task("u1")
    assert created and task.state == PENDING and state.get_or_create_task("u1") == (task, False)


def test_clear_and_freeze_while() -> None:
    state = _busy_state()
    state.clear_tasks()
    assert [u for u, _ in state.itertasks()] == ["t1", "t2", "t3"]  # t0 succeeded
    assert [u for u, _ in state.tasks_by_time()] == ["t3", "t2", "t1"]
    assert "t0" not in state.tasks_by_type["add"]
    assert state.freeze_while(lambda n: n * 2, 21, clear_after=True) == 42
    assert (len(state.tasks), len(state.workers), state.event_count) == (3, 0, 0)
    state.clear(ready=False)
    assert not state.tasks and not list(state.tasks_by_time()) and not state.tasks_by_worker


def test_registry_mapping_behaviour() -> None:
    state = _busy_state()
    assert state.tasks.get("t0").uuid == "t0" and state.tasks.get("zz") is None
    assert list(state.tasks) == ["t1", "t2", "t3", "t0"]  # reads mark as recently used
    del state.tasks["t3"]
    assert "t3" not in state.tasks_by_type["add"]
    assert len(state.tasks.data) == 3


# -- bounded memory ------------------------------------------------------------------------


def test_evictions_are_bounded_and_counted() -> None:
    state = State(max_tasks_in_memory=3)
    for index in range(10):
        state.event(task_ev("received", f"t{index}", name="add", parent_id=f"gone{index}"))
        state.event(task_ev("succeeded", f"t{index}"))
    assert list(state.tasks) == ["t7", "t8", "t9"]
    assert len(state.tasks_by_type["add"]) == 3
    assert len(state._time) <= 12 and len(state._pending) == 3
    assert state.evictions == {"workers": 0, "tasks": 7, "pending_links": 0, "time_entries": 8}


# -- snapshots -----------------------------------------------------------------------------


def test_snapshot_round_trip() -> None:
    state = _busy_state()
    state.event(task_ev("progress", "t1", current=4))
    state.event(task_ev("sent", "t9", "gen5@c", name="mul", parent_id="t1"))
    state.event(task_ev("sent", "t8", "gen5@c", name="mul", parent_id="ghost"))
    restored = State.from_json(state.to_json())
    assert list(restored.tasks.data) == list(state.tasks.data)
    for uuid, task in state.tasks.data.items():
        again = restored.tasks.data[uuid]
        assert again.as_dict() == task.as_dict()
        assert again.extra_fields == task.extra_fields
    assert restored.tasks.data["t1"].current == 4
    assert {t.uuid for t in restored.tasks.data["t1"].children} == {"t9"}
    assert restored._pending == {"ghost": {"t8"}}
    assert list(restored.workers.data) == list(state.workers.data)
    assert restored.workers.data["w1@h"].heartbeats == state.workers.data["w1@h"].heartbeats
    assert (restored.event_count, restored.task_count) == (state.event_count, state.task_count)
    assert {k: set(v.uuids) for k, v in restored.tasks_by_worker.items()} == {
        k: set(v.uuids) for k, v in state.tasks_by_worker.items()
    }
    assert [u for u, _ in restored.tasks_by_time()] == [u for u, _ in state.tasks_by_time()]


def test_snapshot_reapplies_limits_and_checks_format() -> None:
    state = _busy_state()
    small = State.from_json(state.to_json(), max_tasks_in_memory=2, max_workers_in_memory=1)
    assert list(small.tasks) == ["t2", "t3"] and list(small.workers) == ["w2@h"]
    assert small.tasks.data["t3"].worker.hostname == "w1@h"  # detached worker kept
    assert small.evictions["tasks"] == 2
    with pytest.raises(SnapshotError):
        State.from_json('{"format": "pickle"}')
    with pytest.raises(SnapshotError):
        State.from_json(json.dumps({"format": "evcore.state", "version": 99}))


# -- camera --------------------------------------------------------------------------------


def test_camera_shoots_with_maxrate_and_cleanup() -> None:
    now = [0.0]
    shots: list[int] = []
    cleanups: list[bool] = []
    state = _busy_state()
    camera = Camera(
        state,
        maxrate="2/s",
        on_shutter=lambda s: shots.append(len(s.tasks)),
        on_cleanup=lambda: cleanups.append(True),
        clock=lambda: now[0],
    )
    for _ in range(3):
        camera.capture()
    assert shots == [4]  # a bucket of one token
    now[0] = 0.5
    camera.capture()
    camera.cleanup()
    assert (shots, cleanups) == ([4, 4], [True])
    assert Polaroid is Camera


def test_camera_thread_and_context_manager() -> None:
    shots: list[float] = []

    class Recorder(Camera):
        clear_after = True

        def on_shutter(self, state: State) -> None:
            shots.append(time.monotonic())

    state = _busy_state()
    with Recorder(state, freq=0.01, cleanup_freq=0.02):
        deadline = time.monotonic() + 5
        while len(shots) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    count = len(shots)
    assert count >= 4  # the last shot is taken on exit
    time.sleep(0.05)
    assert len(shots) == count and state.event_count == 0


# -- threads -------------------------------------------------------------------------------


def test_ingestion_thread_while_querying() -> None:
    state = State(max_tasks_in_memory=200)
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            for index in range(3000):
                uuid = f"t{index}"
                state.event(task_ev("received", uuid, f"w{index % 3}@h", name="add"))
                state.event(task_ev("succeeded", uuid, f"w{index % 3}@h"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=feed)
    thread.start()
    while thread.is_alive():
        list(state.tasks_by_time(limit=20))
        list(state.itertasks())
        list(state.tasks_by_type("add", limit=5))
        sum(len(v) for v in state.tasks_by_worker.values())
        list(state.tasks.items())
        list(state.alive_workers())
    thread.join()
    assert not errors and state.event_count == 6000 and len(state.tasks) == 200


# -- wire samples --------------------------------------------------------------------------


def _sample_events(name: str) -> list[dict[str, Any]]:
    events = []
    for line in (SAMPLES / name).read_text().splitlines():
        decoded = json.loads(line)["decoded"]
        for event in decoded if isinstance(decoded, list) else [decoded]:
            if "type" in event:
                events.append({**event, "local_received": event["timestamp"] + 0.01})
    return events


@pytest.mark.parametrize("sample", ["redis.jsonl", "amqp.jsonl"])
def test_wire_samples(sample: str) -> None:
    state = State()
    for event in _sample_events(sample):
        state.event(event)
    assert state.rejected == {}
    assert set(state.workers) == {"w1@evcorpus", "w2@evcorpus"}
    states = {task.state for task in state.tasks.values()}
    assert {SUCCESS, "FAILURE", REVOKED, "PROGRESS", PENDING} <= states
    for task in state.tasks.values():
        json.dumps(task.as_dict())
        assert task.origin
    assert state.task_types() and all(name.startswith("tasks.") for name in state.task_types())
    progressed = [t for t in state.tasks.values() if t.extra_fields.get("current") is not None]
    assert progressed


def test_wire_samples_redis_details() -> None:
    state = State()
    for event in _sample_events("redis.jsonl"):
        state.event(event)
    tasks = {uuid[:8]: task for uuid, task in state.tasks.items()}
    assert tasks["42df1711"].state == SUCCESS and tasks["42df1711"].current == 1
    assert tasks["aa6fa542"].state == RECEIVED  # sent, retried, then the redelivery
    assert tasks["fbf3e863"].state == "FAILURE" and tasks["fbf3e863"].requeue is False
    assert (
        tasks["1ad6f5a9"].client == "gen11442@vm"
        and tasks["1ad6f5a9"].worker.hostname == "w2@evcorpus"
    )
    parent, child = tasks["1a0daad0"], tasks["67bb981c"]  # child's task-sent came first
    assert child in parent.children and child.parent is parent


# -- documentation -------------------------------------------------------------------------


def test_state_guide_examples_run() -> None:
    import doctest

    guide = Path(__file__).resolve().parents[1] / "docs" / "state.md"
    result = doctest.testfile(
        str(guide), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False
    )
    assert result.failed == 0 and result.attempted > 40
