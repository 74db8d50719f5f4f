"""The relay over the in-memory transports: memory:// (pub/sub, where Celery workers publish)
into memory+stream:// (durable), with two relays side by side, bad messages, a destination
outage and a lost source."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import make_events, sendable
from evcore import Dispatcher, Receiver
from evcore.cli import cli
from evcore.dispatcher import BOOT_HEADER, SEQ_HEADER
from evcore.errors import ChannelError, ConfigurationError, ConnectionLost
from evcore.eventid import EVENT_ID_HEADER, SeenWindow, event_id
from evcore.registry import connect
from evcore.relay import Relay
from evcore.state import State
from evcore.state.snapshot import snapshot
from evcore.streammonitor import StreamMonitor
from evcore.transport import EARLIEST, TOPIC, Capabilities, Exchange, OutgoingMessage, StreamOptions
from evcore_memory import get_bus
from evcore_memory.stream import get_broker


def _urls(partitions: int = 3) -> tuple[str, str, str]:
    name = uuid.uuid4().hex
    return name, f"memory://{name}", f"memory+stream://{name}?partitions={partitions}"


def _workload(n_tasks: int) -> list[tuple[str, dict[str, Any]]]:
    return sendable(make_events(n_tasks, seed=3))


@contextmanager
def _running(relay: Relay) -> Iterator[Relay]:
    relay.start()
    assert relay.subscribed.wait(2.0)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        relay.stop()
        thread.join(timeout=5.0)
        relay.close(drain_timeout=2.0)


def _settled(relay: Relay, events: int, timeout: float = 5.0) -> None:
    """Wait until the relay has dealt with ``events`` events."""
    deadline = time.monotonic() + timeout
    stats = relay.stats
    while time.monotonic() < deadline:
        if stats.forwarded + stats.dropped + stats.duplicates >= events and not stats.buffered:
            return
        time.sleep(0.01)
    raise AssertionError(f"relay did not settle: {stats}")


def _read_all(url: str, expected: int) -> tuple[State, Receiver, list[dict[str, Any]]]:
    state = State(max_tasks_in_memory=None)
    seen: list[dict[str, Any]] = []

    def handle(event: dict[str, Any]) -> None:
        seen.append(event)
        state.event(event)

    receiver = Receiver(url, handlers={"*": handle}, stream=StreamOptions(start=EARLIEST))
    receiver.capture(limit=expected, timeout=3.0)
    receiver.capture(timeout=0.1)  # anything beyond what was expected shows up here
    receiver.close()
    return state, receiver, seen


def _tasks(state_snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        task["uuid"]: {k: v for k, v in task.items() if k not in ("local_received", "clock")}
        for task in state_snapshot["tasks"]
    }


@pytest.mark.parametrize("batched", [False, True])
def test_every_event_reaches_the_stream_once_in_order(batched: bool) -> None:
    _, source, dest = _urls()
    events = _workload(60)
    groups = ("task",) if batched else ()
    direct = State(max_tasks_in_memory=None)
    watcher = Receiver(source, handlers={"*": direct.event})
    with _running(Relay(source, dest)) as relay:
        with Dispatcher(source, hostname="w1@relay", buffer_group=groups) as dispatcher:
            for type_, fields in events:
                dispatcher.send(type_, **fields)
        _settled(relay, len(events))
    assert watcher.capture(limit=len(events), timeout=2.0) == len(events)
    watcher.close()
    assert relay.stats.forwarded == relay.stats.received == len(events)
    assert relay.stats.dropped == relay.stats.duplicates == 0
    state, receiver, seen = _read_all(dest, len(events))
    # Worker events are appended to every partition: the reader keeps one copy.
    assert len(seen) == len(events)
    assert receiver.stats.duplicates == 2 * sum(1 for t, f in events if "uuid" not in f)
    sent_by_task: dict[str, list[str]] = {}
    for type_, fields in events:
        if "uuid" in fields:
            sent_by_task.setdefault(fields["uuid"], []).append(type_)
    read_by_task: dict[str, list[str]] = {}
    for event in seen:
        if "uuid" in event:
            read_by_task.setdefault(event["uuid"], []).append(event["type"])
    assert read_by_task == sent_by_task
    assert _tasks(snapshot(state)) == _tasks(snapshot(direct))


def test_two_relays_on_one_source_apply_nothing_twice() -> None:
    _, source, dest = _urls()
    events = _workload(50)
    direct = State(max_tasks_in_memory=None)
    watcher = Receiver(source, handlers={"*": direct.event})
    with _running(Relay(source, dest)) as first, _running(Relay(source, dest)) as second:
        with Dispatcher(source, hostname="w1@relay", buffer_group=("task",)) as dispatcher:
            for type_, fields in events:
                dispatcher.send(type_, **fields)
        _settled(first, len(events))
        _settled(second, len(events))
    assert watcher.capture(limit=len(events), timeout=2.0) == len(events)
    watcher.close()
    assert first.stats.forwarded == second.stats.forwarded == len(events)
    state, receiver, seen = _read_all(dest, len(events))
    assert len(seen) == len(events)
    assert state.event_count == len(events)
    # Each relay appends a task event once and a worker event to each of the 3 partitions.
    workers = sum(1 for t, f in events if "uuid" not in f)
    copies = (len(events) - workers) + (2 * 3 - 1) * workers
    assert receiver.stats.duplicates == copies
    assert _tasks(snapshot(state)) == _tasks(snapshot(direct))


def test_unparseable_messages_are_counted_and_the_rest_forwarded() -> None:
    _, source, dest = _urls(partitions=2)
    transport = connect(source)
    exchange = Exchange("celeryev", TOPIC)
    good = {"type": "task-received", "uuid": "t1", "hostname": "w1", "clock": 1}
    with _running(Relay(source, dest)) as relay:
        transport.publish(
            exchange,
            [
                OutgoingMessage("task.received", b"{not json"),
                OutgoingMessage("task.received", b'"a string"'),
                OutgoingMessage("task.received", b"\x80\x04pickle", content_type="x-pickle"),
                OutgoingMessage("task.multi", json.dumps([good, 42, {"no": "type"}]).encode()),
            ],
        )
        _settled(relay, 1)
    transport.close()
    assert relay.stats.unparseable == {"malformed": 1, "not-an-event": 3, "content-type": 1}
    assert relay.stats.forwarded == 1
    _, receiver, seen = _read_all(dest, 1)
    assert [event["uuid"] for event in seen] == ["t1"]
    assert not receiver.stats.rejected


def test_a_destination_outage_is_buffered_then_appended_in_order() -> None:
    name, source, dest = _urls(partitions=1)  # one partition: one total order to check
    events = _workload(30)
    broker = get_broker(name, 1)
    relay = Relay(source, dest, reconnect_delay=(0.01, 0.05))
    with _running(relay):
        broker.set_offline(True)
        with Dispatcher(source, hostname="w1@relay") as dispatcher:
            for type_, fields in events:
                dispatcher.send(type_, **fields)
        deadline = time.monotonic() + 3
        while relay.stats.append_failures < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert relay.stats.append_failures >= 3
        assert relay.stats.buffered == len(events)
        assert relay.stats.forwarded == 0
        broker.set_offline(False)
        _settled(relay, len(events))
    assert relay.stats.forwarded == len(events)
    _, _, seen = _read_all(dest, len(events))
    sent = [fields.get("uuid") for _, fields in events]
    assert [event.get("uuid") for event in seen] == sent


def test_a_full_buffer_drops_and_counts_what_it_cannot_accept() -> None:
    name, source, dest = _urls(partitions=1)
    broker = get_broker(name, 1)
    relay = Relay(source, dest, max_buffer=10, reconnect_delay=(0.01, 0.05))
    with _running(relay):
        broker.set_offline(True)
        with Dispatcher(source, hostname="w1@relay") as dispatcher:
            for i in range(30):
                dispatcher.send("task-received", uuid=f"t{i}", name="add")
        deadline = time.monotonic() + 3
        while relay.stats.received < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        broker.set_offline(False)
        _settled(relay, 30)
    assert (relay.stats.forwarded, relay.stats.dropped) == (10, 20)
    _, _, seen = _read_all(dest, 10)
    assert [event["uuid"] for event in seen] == [f"t{i}" for i in range(10)]


def test_the_buffer_is_bounded_in_bytes_too() -> None:
    name, source, dest = _urls(partitions=1)
    broker = get_broker(name, 1)
    relay = Relay(source, dest, max_buffer_bytes=2_000, reconnect_delay=(0.01, 0.05))
    with _running(relay):
        broker.set_offline(True)
        with Dispatcher(source, hostname="w1@relay") as dispatcher:
            for i in range(10):
                dispatcher.send("task-received", uuid=f"t{i}", name="add", args="x" * 300)
        deadline = time.monotonic() + 3
        while relay.stats.received < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 0 < relay.buffered_bytes <= 2_000
        broker.set_offline(False)
        _settled(relay, 10)
    assert relay.stats.dropped > 0
    assert relay.stats.forwarded + relay.stats.dropped == 10
    assert relay.buffered_bytes == 0


def test_the_source_is_subscribed_again_after_it_went_away() -> None:
    name, source, dest = _urls(partitions=2)
    relay = Relay(source, dest, reconnect_delay=(0.01, 0.05))
    with _running(relay):
        get_bus(name).set_offline(True)
        deadline = time.monotonic() + 3
        while relay.stats.source_reconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        get_bus(name).set_offline(False)
        assert relay.subscribed.wait(3.0)
        with Dispatcher(source, hostname="w1@relay") as dispatcher:
            dispatcher.send("task-received", uuid="after", name="add")
        _settled(relay, 1)
    assert relay.stats.source_reconnects >= 1
    _, _, seen = _read_all(dest, 1)
    assert [event["uuid"] for event in seen] == ["after"]


def test_gaps_in_an_evcore_senders_sequence_are_counted_lost() -> None:
    _, source, dest = _urls(partitions=2)
    transport = connect(source)

    def message(seq: int, events: int) -> OutgoingMessage:
        body = [{"type": "task-started", "uuid": f"t{seq + i}", "clock": seq + i}
                for i in range(events)]
        headers = {BOOT_HEADER: "boot-1", SEQ_HEADER: seq}
        return OutgoingMessage("task.multi", json.dumps(body).encode(), headers)

    with _running(Relay(source, dest)) as relay:
        # 1-2, then 3 and 4 never arrive, 5, then 6-9 missing, 10-12.
        transport.publish(
            Exchange("celeryev", TOPIC), [message(1, 2), message(5, 1), message(10, 3)]
        )
        _settled(relay, 6)
    transport.close()
    assert relay.stats.lost == 2 + 4
    assert relay.stats.forwarded == 6


def test_a_sender_resend_is_appended_once() -> None:
    _, source, dest = _urls(partitions=2)
    transport = connect(source)
    body = json.dumps({"type": "task-started", "uuid": "t1", "hostname": "w", "clock": 5})
    with _running(Relay(source, dest)) as relay:
        message = OutgoingMessage("task.started", body.encode())
        transport.publish(Exchange("celeryev", TOPIC), [message, message])
        _settled(relay, 2)
    transport.close()
    assert (relay.stats.forwarded, relay.stats.duplicates) == (1, 1)


def test_a_named_queue_needs_a_source_that_keeps_queues() -> None:
    _, source, dest = _urls()
    with pytest.raises(ConfigurationError, match="keeps nothing"):
        Relay(source, dest, queue="relay-a")


class _LostSubscription:
    def receive(self, timeout: float | None = None) -> list[Any]:
        raise ConnectionLost("the broker went away")

    def close(self) -> None:
        pass


class _RefusingSource:
    """A source that loses its connection, then refuses the new subscription (a channel
    error, such as a queue that cannot be declared again, not an outage)."""

    driver_type = "memory"
    capabilities = Capabilities()

    def __init__(self) -> None:
        self.subscriptions = 0

    def publish(self, exchange: Exchange, messages: Any) -> None:
        raise ChannelError("publishing is not what a relay does")

    def subscribe(self, *args: Any) -> Any:
        self.subscriptions += 1
        if self.subscriptions == 1:
            return _LostSubscription()
        raise ChannelError("queue 'relay-a' is declared with other arguments")

    def close(self) -> None:
        pass


def test_a_source_refusal_stops_the_relay_and_says_why() -> None:
    _, _, dest = _urls()
    relay = Relay(_RefusingSource(), dest)
    relay.run(duration=5.0)  # returns at once: the reader stopped the relay
    relay.close()
    assert isinstance(relay.error, ChannelError)
    assert relay.stats.source_reconnects == 0  # lost, and never subscribed again


def test_a_refusal_at_start_is_raised() -> None:
    source = _RefusingSource()
    source.subscriptions = 1
    with pytest.raises(ChannelError, match="other arguments"):
        Relay(source, f"memory+stream://{uuid.uuid4().hex}")


def test_a_non_durable_destination_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be durable"):
        Relay("memory://a", f"memory://{uuid.uuid4().hex}")


def test_appended_messages_carry_the_event_keys_and_a_single_event_its_bytes() -> None:
    _, source, dest = _urls(partitions=2)
    reader = connect(dest).subscribe_stream(  # type: ignore[attr-defined]
        Exchange("celeryev", TOPIC), "#", StreamOptions(start=EARLIEST)
    )
    event = {"type": "task-received", "uuid": "t1", "hostname": "w", "clock": 3, "pid": 9}
    raw = json.dumps(event).encode()
    transport = connect(source)
    with _running(Relay(source, dest)) as relay:
        transport.publish(Exchange("celeryev", TOPIC), [OutgoingMessage("task.received", raw)])
        _settled(relay, 1)
    transport.close()
    (message,) = reader.receive(1.0)
    reader.close()
    assert message.body == raw
    assert message.headers[EVENT_ID_HEADER] == [event_id(event)]


def test_the_window_forgets_partitions_and_stays_bounded() -> None:
    window = SeenWindow(limit=3)
    assert not window.seen("a", 0) and not window.seen("b", 1)
    window.forget([0])
    assert not window.seen("a", 1)  # forgotten with partition 0: new again
    assert window.seen("b", 0)
    for key in "cdef":
        window.seen(key, 0)
    assert len(window) == 3


def test_the_cli_relays_and_prints_its_counters() -> None:
    _, source, dest = _urls(partitions=2)
    runner = CliRunner()

    def publish() -> None:
        time.sleep(0.3)
        with Dispatcher(source, hostname="w1@cli") as dispatcher:
            dispatcher.send("worker-online", freq=2.0)
            dispatcher.send("task-received", uuid="t1", name="add")

    thread = threading.Thread(target=publish)
    thread.start()
    result = runner.invoke(cli, ["relay", source, dest, "--duration", "0.8"])
    thread.join()
    assert result.exit_code == 0, result.output
    counters = json.loads(result.stdout.strip().splitlines()[-1])
    assert counters["forwarded"] == 2
    assert counters["unparseable"] == 0


def test_the_cli_names_a_non_durable_destination() -> None:
    result = CliRunner().invoke(cli, ["relay", "memory://x", "memory://y"])
    assert result.exit_code == 1
    assert "must be durable" in result.output



class _GatedDestination:
    """A durable transport whose appends wait for a gate: a relay lagging behind another."""

    def __init__(self, url: str) -> None:
        self.inner = connect(url)
        self.driver_type = self.inner.driver_type
        self.capabilities = self.inner.capabilities
        self.gate = threading.Event()

    def publish(self, exchange: Exchange, messages: Any) -> None:
        self.gate.wait(5.0)
        self.inner.publish(exchange, messages)

    def subscribe(self, *args: Any) -> Any:
        return self.inner.subscribe(*args)

    def close(self) -> None:
        self.inner.close()


def test_a_resumed_monitor_drops_a_late_copy_of_an_event_its_checkpoint_holds(
    tmp_path: Path,
) -> None:
    """Relay B lags: its copies land after a monitor's checkpoint. The restarted monitor
    restores the keys with the checkpoint and applies nothing twice."""
    _, source, dest = _urls(partitions=2)
    lagging = _GatedDestination(dest)
    checkpoint = tmp_path / "monitor.json"
    with _running(Relay(source, dest)) as first, _running(Relay(source, lagging)) as second:
        with Dispatcher(source, hostname="w1@relay") as dispatcher:
            for i in range(5):
                dispatcher.send("task-received", uuid=f"t{i}", name="add")
        _settled(first, 5)
        monitor = StreamMonitor(dest, checkpoint)
        monitor.run(duration=0.3)
        monitor.close()
        assert monitor.state.event_count == 5
        lagging.gate.set()
        with Dispatcher(source, hostname="w1@relay") as dispatcher:
            dispatcher.send("task-received", uuid="t5", name="add")
        _settled(first, 6)
        _settled(second, 6)
    resumed = StreamMonitor(dest, checkpoint)
    resumed.run(duration=0.3)
    resumed.close()
    assert resumed.state.event_count == 6
    assert resumed.receiver.stats.duplicates == 6
    assert sorted(resumed.state.tasks) == [f"t{i}" for i in range(6)]


def test_a_group_reading_two_relays_copies_applies_each_event_once_after_a_takeover() -> None:
    """Members of a group each drop the second relay's copies; the member that takes over a
    dead member's partitions rebuilds them from history with each event applied once."""
    _, source, dest = _urls(partitions=4)
    events = _workload(80)
    with _running(Relay(source, dest)) as first_relay, _running(Relay(source, dest)) as other:
        with Dispatcher(source, hostname="w1@relay", buffer_group=("task",)) as dispatcher:
            for type_, fields in events:
                dispatcher.send(type_, **fields)
        _settled(first_relay, len(events))
        _settled(other, len(events))
    single, _, _ = _read_all(dest, len(events))
    assert single.event_count == len(events)

    def replay(partitions: frozenset[int]) -> dict[int, str]:
        return dict.fromkeys(partitions, EARLIEST)

    members = []
    for i in range(2):
        state = State(max_tasks_in_memory=None)
        options = StreamOptions(group="g", member=f"m{i}", lease=0.3, on_assigned=replay)
        members.append((state, Receiver(dest, handlers={"*": state.event}, stream=options)))
    (_, dead), (state, survivor) = members
    dead.capture(limit=40, timeout=0.5)  # reads a little, then stops renewing its lease
    for _ in range(80):
        survivor.capture(timeout=0.05)
        if survivor.assignment() == frozenset(range(4)):
            break
    assert survivor.assignment() == frozenset(range(4))
    survivor.capture(timeout=0.3)
    dead.close()
    survivor.close()
    assert state.event_count == len(events)
    assert survivor.stats.duplicates > 0
    assert _tasks(snapshot(state)) == _tasks(snapshot(single))
