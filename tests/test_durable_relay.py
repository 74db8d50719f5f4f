"""The relay: pub/sub in, durable stream out, two side by side without double application."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest

from evcore import Receiver
from evcore.relay import Relay, idempotency_key
from evcore.state import State
from evcore.transport import EARLIEST, Exchange, OutgoingMessage, StreamOptions
from evcore_memory import get_bus


def _celery_events(count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"hostname": "celery@w1", "pid": 7, "clock": 1, "timestamp": 1.0, "type": "worker-online"}
    ]
    for i in range(count):
        events.append(
            {
                "hostname": "celery@w1",
                "pid": 7,
                "clock": i + 2,
                "timestamp": 2.0 + i / 1000,
                "type": "task-received",
                "uuid": f"task-{i}",
                "name": "add",
            }
        )
    return events


def _publish_like_celery(source: str, events: list[dict[str, Any]]) -> None:
    """Plain JSON bodies without evcore's headers, as Celery's workers publish them."""
    bus = get_bus(source.removeprefix("memory://"))
    exchange = Exchange("celeryev", "topic")
    bus.publish(
        exchange,
        [
            OutgoingMessage(event["type"].replace("-", "."), json.dumps(event).encode())
            for event in events
        ],
    )


def test_idempotency_key_is_the_same_for_equal_events_and_differs_otherwise() -> None:
    event = {
        "hostname": "h",
        "pid": 1,
        "type": "task-started",
        "uuid": "u",
        "clock": 3,
        "timestamp": 1.5,
    }
    assert idempotency_key(dict(event)) == idempotency_key(dict(event))
    assert idempotency_key({**event, "clock": 4}) != idempotency_key(event)
    assert idempotency_key({**event, "uuid": "v"}) != idempotency_key(event)


def test_two_relays_side_by_side_apply_each_event_once() -> None:
    name = uuid.uuid4().hex
    source, destination = f"memory://{name}", f"memory+stream://{name}?partitions=3"
    relays = [Relay(source, destination, name=f"relay-{i}") for i in range(2)]
    events = _celery_events(200)
    _publish_like_celery(source, events)
    get_bus(name).publish(
        Exchange("celeryev", "topic"), [OutgoingMessage("task.received", b"{not json")]
    )
    for relay in relays:
        relay.run(duration=0.2)
    stats = []
    for relay in relays:
        relay.close()
        stats.append(relay.stats)
    for counted in stats:
        assert counted.forwarded == len(events)
        assert counted.unparseable == 1
        assert counted.received == counted.forwarded + counted.unparseable
        assert counted.dropped == 0 and counted.pending == 0

    state = State()
    monitor = Receiver(
        destination, handlers={"*": state.event}, stream=StreamOptions(start=EARLIEST)
    )
    handled = monitor.capture(timeout=0.5)
    monitor.close()
    assert handled == len(events)
    assert state.event_count == len(events)
    assert len(state.tasks) == 200
    assert not monitor.stats.lost_events
    # The second relay's copies (and the copies of worker events in every partition).
    assert monitor.stats.duplicates >= len(events)
    # Forwarded unchanged: the worker's own hostname and clock.
    assert state.tasks["task-5"].worker.hostname == "celery@w1"
    assert state.tasks["task-5"].clock == 7


def test_the_relay_survives_its_source_going_away() -> None:
    name = uuid.uuid4().hex
    source, destination = f"memory://{name}", f"memory+stream://{name}?partitions=2"
    relay = Relay(source, destination)
    relay.receiver.reconnect_delay = (0.01, 0.05)
    _publish_like_celery(source, _celery_events(10))
    relay.run(duration=0.1)
    get_bus(name).set_offline(True)
    runner = threading.Thread(target=relay.run, kwargs={"duration": 0.6})
    runner.start()
    get_bus(name).set_offline(False)
    threading.Event().wait(0.3)  # the relay subscribes again
    later = _celery_events(20)[11:]
    _publish_like_celery(source, later)
    runner.join()
    relay.close()
    assert relay.stats.source_reconnects >= 1
    assert relay.stats.forwarded == 11 + len(later)


def test_the_relay_needs_a_durable_destination() -> None:
    with pytest.raises(ValueError, match="durable"):
        Relay("memory://relay-src", "memory://relay-dst")
