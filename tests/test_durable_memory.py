"""The durable side over the in-memory streams: partitioning, groups, takeover, retention,
and the union of a group's States against one State that read everything."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import make_events, sendable
from evcore import Dispatcher, Receiver
from evcore import receiver as receiver_module
from evcore.errors import ConfigurationError, InvalidURL
from evcore.registry import connect
from evcore.state import State
from evcore.state.merge import merge_snapshots
from evcore.state.snapshot import snapshot
from evcore.transport import EARLIEST, Exchange, OutgoingMessage, StreamOptions, partition_for


def _url(partitions: int = 4, **query: Any) -> str:
    extra = "".join(f"&{key}={value}" for key, value in query.items())
    return f"memory+stream://{uuid.uuid4().hex}?partitions={partitions}{extra}"


def _send_workload(url: str, n_tasks: int, batched: bool = False) -> int:
    events = sendable(make_events(n_tasks, seed=11))
    groups = ("task",) if batched else ()
    with Dispatcher(url, hostname="w1@durable", buffer_group=groups) as dispatcher:
        for type_, fields in events:
            dispatcher.send(type_, **fields)
    return len(events)


def _state_reader(url: str, **options: Any) -> tuple[State, Receiver]:
    state = State(max_tasks_in_memory=None)
    receiver = Receiver(
        url,
        handlers={"*": state.event},
        on_loss=state.record_loss,
        stream=StreamOptions(start=EARLIEST, **options),
    )
    return state, receiver


def _comparable(state_snapshot: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tasks and workers by key, without what depends on the reader's own clock."""

    def clean(record: dict[str, Any]) -> dict[str, Any]:
        # Heartbeat times are when this reader received them: keep only how many.
        kept = {k: v for k, v in record.items() if k not in ("local_received", "heartbeats")}
        if "heartbeats" in record:
            kept["heartbeats"] = len(record["heartbeats"])
        return kept

    tasks = {task["uuid"]: clean(task) for task in state_snapshot["tasks"]}
    workers = {worker["hostname"]: clean(worker) for worker in state_snapshot["workers"]}
    return tasks, workers


def test_task_events_go_to_their_partition_and_worker_events_everywhere() -> None:
    url = _url(4)
    with Dispatcher(url, hostname="w1@durable") as dispatcher:
        dispatcher.send("worker-online", freq=2.0)
        for i in range(20):
            dispatcher.send("task-received", uuid=f"task-{i}", name="add")
    reader = Receiver(url, stream=StreamOptions(start=EARLIEST))
    subscription = reader._subscribe()
    messages = list(subscription.receive(1.0))
    reader.close()
    online = [m for m in messages if m.routing_key == "worker.online"]
    assert sorted(m.partition for m in online) == [0, 1, 2, 3]
    for message in messages:
        if message.routing_key == "task.received":
            task_id = json.loads(message.body)["uuid"]
            assert message.partition == partition_for(task_id, 4)
    lanes = {m.headers["evcore-boot"].rsplit("/", 1)[1] for m in messages}
    assert lanes <= {"-1", "0", "1", "2", "3"} and "-1" in lanes


def test_one_reader_of_every_partition_applies_each_event_once() -> None:
    url = _url(4)
    sent = _send_workload(url, 200, batched=True)
    state, receiver = _state_reader(url)
    handled = receiver.capture(timeout=1.0)
    stats = receiver.stats
    receiver.close()
    # Worker events are in all four partitions: three copies of each are duplicates.
    assert handled == sent
    assert not stats.lost_events and not state.lost_events
    assert stats.duplicates > 0
    assert len(state.tasks) == 200


def test_stream_options_need_a_durable_transport() -> None:
    with pytest.raises(ConfigurationError, match="durable"):
        Receiver("memory://not-durable", stream=StreamOptions())


def test_bad_memory_stream_urls_are_refused() -> None:
    name = uuid.uuid4().hex
    connect(f"memory+stream://{name}?partitions=2").close()
    with pytest.raises(InvalidURL, match="already open"):
        connect(f"memory+stream://{name}?partitions=3")
    with pytest.raises(InvalidURL):
        connect("memory+stream://x?max_age=-1")


def _run_group(url: str, members: int, rounds: int = 60) -> list[tuple[State, Receiver]]:
    readers = [_state_reader(url, group="g", member=f"m{i}", lease=0.5) for i in range(members)]
    for _ in range(rounds):
        handled = sum(receiver.capture(timeout=0.02) for _, receiver in readers)
        if handled == 0 and all(receiver.assignment() for _, receiver in readers):
            break
    return readers


def test_union_of_a_groups_states_equals_one_state_field_by_field() -> None:
    url = _url(4)
    _send_workload(url, 300, batched=True)
    single, receiver = _state_reader(url)
    receiver.capture(timeout=1.0)
    receiver.close()

    readers = _run_group(url, 2)
    owned = [receiver.assignment() for _, receiver in readers]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    assert owned[0] | owned[1] == frozenset(range(4))
    union = merge_snapshots(snapshot(state) for state, _ in readers)
    for _, member in readers:
        assert not member.stats.lost_events
        member.close()

    union_tasks, union_workers = _comparable(union)
    single_tasks, single_workers = _comparable(snapshot(single))
    assert union_tasks.keys() == single_tasks.keys()
    for task_id, fields in single_tasks.items():
        assert union_tasks[task_id] == fields, task_id
    assert union_workers == single_workers
    # The restored union answers like the single State.
    merged = State.from_json(union, max_tasks_in_memory=None)
    assert {t.uuid: t.state for t in merged.tasks.values()} == {
        t.uuid: t.state for t in single.tasks.values()
    }
    assert any(t.retries for t in single.tasks.values() if t.retries)
    assert any(t.children for t in merged.tasks.values())


def test_a_dead_members_partitions_are_taken_over_and_nothing_is_applied_twice() -> None:
    url = _url(4)
    _send_workload(url, 150)
    single, receiver = _state_reader(url)
    receiver.capture(timeout=1.0)
    receiver.close()

    def replay(partitions: frozenset[int]) -> dict[int, str]:
        # No checkpoint to restore: rebuild the partition's State from its history.
        return dict.fromkeys(partitions, EARLIEST)

    members = [
        _state_reader(url, group="g", member=f"m{i}", lease=0.3, on_assigned=replay)
        for i in range(2)
    ]
    (_, first), (second_state, second) = members
    first.capture(limit=100, timeout=0.5)  # m0 reads a little, then stops: dead
    assert first.assignment() and second.assignment() is not None
    for _ in range(80):
        second.capture(timeout=0.05)
        if second.assignment() == frozenset(range(4)):
            break
    assert second.assignment() == frozenset(range(4))
    second.capture(timeout=0.3)
    assert not second.stats.lost_events
    assert second_state.event_count == single.event_count
    assert _comparable(snapshot(second_state)) == _comparable(snapshot(single))
    first.close()
    second.close()


def test_a_reader_behind_retention_counts_the_loss_exactly() -> None:
    url = _url(1, maxlen=100)
    seen: list[dict[str, Any]] = []
    receiver = Receiver(url, handlers={"*": seen.append}, stream=StreamOptions(start=EARLIEST))
    with Dispatcher(url, hostname="w1@durable") as dispatcher:
        for i in range(10):
            dispatcher.send("task-received", uuid=f"a{i}", name="add")
        assert receiver.capture(timeout=0.2) == 10
        for i in range(500):
            dispatcher.send("task-received", uuid=f"b{i}", name="add")
    receiver.capture(timeout=0.2)
    receiver.close()
    assert len(seen) == 110
    assert sum(receiver.stats.lost_events.values()) == 400
    assert receiver.stats.trimmed == 400


def test_copies_for_every_partition_read_out_of_order_are_applied_once() -> None:
    """A partition given to a reader later may be ahead of its others: its copies of
    worker events come first, and the others' older copies must still be applied, once,
    with nothing counted as lost."""
    url = _url(2)
    transport = connect(url)
    exchange = Exchange("celeryev", "topic")

    def heartbeats(partition: int, first: int, last: int) -> list[OutgoingMessage]:
        return [
            OutgoingMessage(
                "worker.heartbeat",
                json.dumps(
                    {"type": "worker-heartbeat", "hostname": "w1", "clock": n, "timestamp": n}
                ).encode(),
                {"hostname": "w1", "evcore-boot": "boot/-1", "evcore-seq": n},
                partition=partition,
            )
            for n in range(first, last + 1)
        ]

    seen: list[int] = []
    receiver = Receiver(
        url,
        handlers={"*": lambda event: seen.append(event["timestamp"])},
        stream=StreamOptions(start=EARLIEST),
        sequences={"boot/-1": [6, []]},  # 1 to 5 applied before a restart
    )
    transport.publish(exchange, heartbeats(1, 6, 20)[10:])  # partition 1 is ahead: 16-20
    assert receiver.capture(timeout=0.2) == 5
    transport.publish(exchange, heartbeats(0, 6, 20))  # partition 0 catches up: 6-20
    assert receiver.capture(timeout=0.2) == 10
    receiver.close()
    transport.close()
    assert sorted(seen) == list(range(6, 21))
    assert not receiver.stats.lost_events
    assert receiver.stats.duplicates == 5
    assert receiver.sequences()["boot/-1"] == [21, []]


def test_replayed_events_are_received_when_they_were_appended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read long after it was appended, an event's ``local_received`` is its append time
    (so a worker's last heartbeat is as old as it really is); read live, it is ours."""
    monkeypatch.setattr(receiver_module, "REPLAY_AGE", 0.2)
    url = _url(1)
    before = time.time()
    with Dispatcher(url, hostname="w1@replay") as dispatcher:
        dispatcher.send("worker-heartbeat", freq=2.0)
    appended = time.time()
    time.sleep(0.4)
    seen: list[dict[str, Any]] = []
    receiver = Receiver(url, handlers={"*": seen.append}, stream=StreamOptions(start=EARLIEST))
    assert receiver.capture(limit=1, timeout=5) == 1
    assert before <= seen[0]["local_received"] <= appended
    live = time.time()
    with Dispatcher(url, hostname="w1@replay") as dispatcher:
        dispatcher.send("worker-heartbeat", freq=2.0)
    assert receiver.capture(limit=1, timeout=5) == 1
    assert seen[1]["local_received"] >= live
    receiver.close()
