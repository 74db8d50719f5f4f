"""Hostile events fed straight to the State: it never raises, and every refusal is counted.

Also the regression cases fuzzing found: integers too large for a float in a time field,
and infinite or far-future timestamps in the drift warning.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from _fuzz_strategies import EVENT_TYPES, events, values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evcore import State

HANDLED_GROUPS = {"task", "worker"}


def handled(event: Any) -> bool:
    """Whether the State applies events of this type (rather than ignoring them)."""
    kind = event.get("type") if isinstance(event, dict) else None
    return isinstance(kind, str) and kind.partition("-")[0] in HANDLED_GROUPS


def exercise(state: State) -> None:
    """Every query a monitor makes, so that stored junk cannot break one later."""
    for worker in state.workers.values():
        repr(worker)
        worker.as_dict()
        _ = worker.alive, worker.heartbeat_expires
    for task in state.tasks.values():
        repr(task)
        task.as_dict()
        _ = task.ready, task.children, task.parent, task.root
    list(state.tasks_by_time())
    list(state.tasks_by_type)
    list(state.alive_workers())
    state.task_types()
    state.rebuild_taskheap()
    restored = State.from_json(state.to_json())
    assert len(restored.tasks) == len(state.tasks)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(events(), values), max_size=12))
def test_state_never_raises_and_counts_every_refusal(stream: list[Any]) -> None:
    state = State(max_tasks_in_memory=5, max_workers_in_memory=3)
    for event in stream:
        refused = sum(state.rejected.values())
        result = state.event(event)
        newly_refused = sum(state.rejected.values()) - refused
        assert newly_refused in (0, 1)
        if result is None and handled(event):
            assert newly_refused == 1, f"{event!r:.300} was dropped without a count"
        if result is not None:
            assert newly_refused == 0
    assert state.event_count == len(stream)
    exercise(state)


TASK = {"type": "task-started", "uuid": "u", "hostname": "w"}
WORKER = {"type": "worker-heartbeat", "hostname": "w"}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({**TASK, "timestamp": 10**400}, "bad-timestamp"),
        ({**TASK, "timestamp": True}, "bad-timestamp"),
        ({**WORKER, "timestamp": 10**400}, "bad-timestamp"),
        ({**WORKER, "freq": 10**400}, "bad-freq"),
        ({**WORKER, "local_received": -(10**400)}, "bad-local_received"),
    ],
)
def test_integers_beyond_float_range_are_refused_as_times(
    event: dict[str, Any], reason: str
) -> None:
    state = State()
    base = {"timestamp": time.time(), "local_received": time.time(), "clock": 1}
    assert state.event({**base, **event}) is None
    assert state.rejected == {reason: 1}
    exercise(state)


@pytest.mark.parametrize("timestamp", [float("inf"), float("-inf"), float("nan"), 1e20, -1e20])
@pytest.mark.parametrize("kind", ["task-started", "worker-heartbeat"])
def test_odd_float_timestamps_are_kept_without_raising(kind: str, timestamp: float) -> None:
    state = State()
    event = {
        "type": kind,
        "uuid": "u",
        "hostname": f"w-{kind}-{timestamp}",  # a new host each time: the drift warning runs
        "timestamp": timestamp,
        "local_received": time.time(),
        "clock": 1,
    }
    assert state.event(event) is not None
    assert state.rejected == {}
    exercise(state)


def test_every_event_type_with_no_fields_is_counted() -> None:
    state = State()
    for kind in EVENT_TYPES:
        state.event({"type": kind})
    handled_types = [kind for kind in EVENT_TYPES if handled({"type": kind})]
    assert sum(state.rejected.values()) == len(handled_types)
