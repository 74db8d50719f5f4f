"""Differential tests: Celery's own State and evcore's, fed the same streams, must agree.

Every task and worker field, LRU orders (evictions), counters, time order and callbacks are
compared by ``test_state_support.assert_same``. The index differences listed in docs/compat.md are
checked as "evcore's index holds Celery's, plus what evcore's rule adds".
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_state_support import assert_same, feed

from evcore.state import State

HOSTS = ("w1@h", "w2@h", "w3@h")
CLIENTS = ("gen11@c", "gen12@c")
NAMES = ("proj.add", "proj.mul", "proj.io")
UUIDS = tuple(f"{n:08x}-0000-4000-8000-000000000000" for n in range(1, 9))
SUBJECTS = (
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
    "progress",
    "cancelled",
)

Event = dict[str, Any]


def _fields(subject: str, name: str, parent: str | None, root: str) -> dict[str, Any]:
    if subject == "sent":
        return {
            "root_id": root,
            "parent_id": parent,
            "name": name,
            "args": "(1, 2)",
            "kwargs": "{}",
            "retries": 0,
            "eta": None,
            "expires": None,
            "queue": "celery",
            "exchange": "",
            "routing_key": "celery",
        }
    if subject == "received":
        return {
            "name": name,
            "args": "(1, 2)",
            "kwargs": "{}",
            "root_id": root,
            "parent_id": parent,
            "retries": 1,
            "eta": None,
            "expires": None,
        }
    return {
        "succeeded": {"result": "3", "runtime": 0.5},
        "failed": {"exception": "ValueError()", "traceback": "Traceback..."},
        "retried": {"exception": "Retry()", "traceback": "Traceback..."},
        "revoked": {"terminated": True, "signum": 15, "expired": False},
        "rejected": {"requeue": False},
        "progress": {"current": 5, "total": 10},
    }.get(subject, {})


@st.composite
def task_events(
    draw: st.DrawFn, uuid: str, parents: tuple[str, ...]
) -> list[tuple[str, str, Event]]:
    """One task's events as (type, hostname, fields), in the order they happened."""
    name = draw(st.sampled_from(NAMES))
    parent = draw(st.sampled_from((None, *parents)))
    root = parents[0] if parent and parents else uuid
    worker = draw(st.sampled_from(HOSTS))
    events = []
    if draw(st.booleans()):
        client = draw(st.sampled_from(CLIENTS))
        events.append(("task-sent", client, {"uuid": uuid, **_fields("sent", name, parent, root)}))
    for subject in draw(st.lists(st.sampled_from(SUBJECTS), max_size=5)):
        fields = {"uuid": uuid, **_fields(subject, name, parent, root)}
        events.append((f"task-{subject}", worker, fields))
    return events


@st.composite
def worker_events(draw: st.DrawFn) -> list[tuple[str, str, Event]]:
    """A few worker events (online, heartbeats, offline) of random workers."""
    events = []
    for subject in draw(st.lists(st.sampled_from(("online", "heartbeat", "offline")), max_size=5)):
        fields = {
            "freq": 2.0,
            "active": draw(st.integers(0, 3)),
            "processed": draw(st.integers(0, 100)),
            "loadavg": [0.1, 0.2, 0.3],
            "sw_ident": "py-celery",
            "sw_ver": "5.7.0",
            "sw_sys": "Linux",
        }
        events.append((f"worker-{subject}", draw(st.sampled_from(HOSTS)), fields))
    return events


def _stamp(raw: list[tuple[str, str, Event]], clocks: list[int]) -> list[Event]:
    """Full events: envelope fields, a clock per event, timestamps in generation order."""
    stamped = []
    for index, ((type_, hostname, fields), clock) in enumerate(zip(raw, clocks, strict=False)):
        timestamp = 1000.0 + index
        stamped.append(
            {
                "hostname": hostname,
                "utcoffset": 0.0,
                "pid": 100 + HOSTS.index(hostname) if hostname in HOSTS else 7,
                "clock": clock,
                **fields,
                "timestamp": timestamp,
                "type": type_,
                # equal to timestamp: Celery files task-event heartbeats under the sender's
                # timestamp, evcore under local_received (docs/compat.md)
                "local_received": timestamp,
            }
        )
    return stamped


@st.composite
def streams(draw: st.DrawFn, max_tasks: int = 5) -> list[Event]:
    """Interleaved lifecycles of several tasks and workers, permuted, with duplicates."""
    count = draw(st.integers(1, max_tasks))
    raw: list[tuple[str, str, Event]] = []
    for index in range(count):
        raw += draw(task_events(UUIDS[index], UUIDS[:index]))
    raw += draw(worker_events())
    if draw(st.booleans()):
        raw.append(("custom-phase", CLIENTS[0], {"phase": "probe"}))
    clocks = draw(
        st.one_of(
            st.just(list(range(1, len(raw) + 1))),
            st.lists(st.integers(1, 12), min_size=len(raw), max_size=len(raw)),
        )
    )
    events = _stamp(raw, clocks)
    events = draw(st.permutations(events))
    duplicates = draw(st.lists(st.integers(0, max(len(events) - 1, 0)), max_size=3))
    for position in duplicates:
        if events:
            events.insert(draw(st.integers(0, len(events))), events[position])
    return events


LIMITS = st.fixed_dictionaries(
    {},
    optional={
        "max_tasks_in_memory": st.integers(1, 5),
        "max_workers_in_memory": st.integers(1, 3),
    },
)

DIFF_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@DIFF_SETTINGS
@given(streams())
def test_interleaved_streams_match_celery(events: list[Event]) -> None:
    assert_same(*feed(events))


@DIFF_SETTINGS
@given(streams(), LIMITS)
def test_streams_with_evictions_match_celery(events: list[Event], limits: dict[str, int]) -> None:
    assert_same(*feed(events, **limits))


@settings(max_examples=100, deadline=None)
@given(
    st.data(),
    st.lists(st.sampled_from(SUBJECTS), min_size=1, max_size=6),
    st.booleans(),
)
def test_any_permutation_of_one_task_matches_celery(
    data: st.DataObject, subjects: list[str], with_sent: bool
) -> None:
    raw = [
        (
            f"task-{subject}",
            "w1@h",
            {"uuid": UUIDS[0], **_fields(subject, "proj.add", None, UUIDS[0])},
        )
        for subject in subjects
    ]
    if with_sent:
        raw.insert(
            0,
            (
                "task-sent",
                CLIENTS[0],
                {"uuid": UUIDS[0], **_fields("sent", "proj.add", None, UUIDS[0])},
            ),
        )
    events = data.draw(st.permutations(_stamp(raw, list(range(1, len(raw) + 1)))))
    assert_same(*feed(events))


@settings(max_examples=60, deadline=None)
@given(streams(), st.booleans())
def test_node_callbacks_match_celery(events: list[Event], with_leave: bool) -> None:
    from celery.events.state import State as CeleryState

    calls: dict[str, list[tuple[str, str]]] = {"celery": [], "evcore": []}

    def recorder(side: str, what: str) -> Any:
        return lambda worker: calls[side].append((what, worker.hostname))

    celery_state = CeleryState(
        on_node_join=recorder("celery", "join"),
        on_node_leave=recorder("celery", "leave") if with_leave else None,
    )
    ours = State(
        on_node_join=recorder("evcore", "join"),
        on_node_leave=recorder("evcore", "leave") if with_leave else None,
    )
    for event in events:
        expected = celery_state.event(dict(event))
        got = ours.event(dict(event))
        assert (expected is None) == (got is None)
        if expected is not None:
            assert expected[1] == got[1]
            assert expected[0][1] == got[0][1]
    assert calls["celery"] == calls["evcore"]
    assert list(celery_state.workers.data) == list(ours.workers.data)


def test_eviction_steady_state_matches_celery() -> None:
    """Many more tasks than the limit: LRU eviction, heap trimming and indexes agree."""
    raw: list[tuple[str, str, Event]] = []
    for index in range(300):
        uuid = f"{index:08x}-1111-4000-8000-000000000000"
        parent = (
            f"{index - 3:08x}-1111-4000-8000-000000000000" if index % 5 == 0 and index else None
        )
        raw.append(
            (
                "task-sent",
                CLIENTS[index % 2],
                {"uuid": uuid, **_fields("sent", NAMES[index % 3], parent, uuid)},
            )
        )
        for subject in ("received", "started", "succeeded" if index % 7 else "failed"):
            raw.append(
                (
                    f"task-{subject}",
                    HOSTS[index % 3],
                    {"uuid": uuid, **_fields(subject, NAMES[index % 3], parent, uuid)},
                )
            )
    events = _stamp(raw, list(range(1, len(raw) + 1)))
    celery_state, ours = feed(events, max_tasks_in_memory=50, max_workers_in_memory=2)
    assert_same(celery_state, ours)
    assert ours.evictions["tasks"] == 250
    assert ours.evictions["time_entries"] == len(events) - 200
