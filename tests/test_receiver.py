from __future__ import annotations

import json
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import evcore
from evcore import Dispatcher, LamportClock, Receiver
from evcore.transport import Exchange, OutgoingMessage
from evcore_memory import MemoryBus

EXCHANGE = Exchange("celeryev", "topic")
#: Real Celery 5.7 messages kept in the repository (data/wire-samples/README.md).
SAMPLES = Path(__file__).resolve().parent / "data" / "wire-samples"


def raw_publish(url: str, key: str, body: bytes, content_type: str = "application/json") -> None:
    message = OutgoingMessage(key, body, {"hostname": "x"}, content_type=content_type)
    evcore.connect(url).publish(EXCHANGE, [message])


def collecting(url: str, **options: Any) -> tuple[Receiver, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    return Receiver(url, handlers={"*": seen.append}, **options), seen


def test_handlers_by_type_with_catch_all(bus_url: str) -> None:
    started: list[str] = []
    other: list[str] = []
    receiver = Receiver(
        bus_url,
        handlers={
            "task-started": lambda e: started.append(e["uuid"]),
            "*": lambda e: other.append(e["type"]),
        },
    )
    dispatcher = Dispatcher(bus_url)
    dispatcher.send("task-started", uuid="a")
    dispatcher.send("worker-online")
    assert receiver.capture(limit=2, timeout=1) == 2
    assert started == ["a"]
    assert other == ["worker-online"]


def test_events_without_handler_are_dropped_quietly(bus_url: str) -> None:
    receiver = Receiver(bus_url, handlers={"task-started": lambda e: None})
    Dispatcher(bus_url).send("worker-online")
    assert receiver.capture(limit=1, timeout=1) == 1
    assert receiver.stats.handler_errors == 0


def test_batches_are_expanded_in_order_and_filtered_by_type_after(bus_url: str) -> None:
    succeeded: list[str] = []
    receiver = Receiver(bus_url, handlers={"task-succeeded": lambda e: succeeded.append(e["uuid"])})
    dispatcher = Dispatcher(bus_url, buffer_group={"task"}, buffer_limit=4)
    for uuid in ("a", "b"):
        dispatcher.send("task-started", uuid=uuid)
        dispatcher.send("task-succeeded", uuid=uuid)
    events = list(receiver.itercapture(limit=4, timeout=1))
    assert [(e["type"], e["uuid"]) for e in events] == [
        ("task-started", "a"),
        ("task-succeeded", "a"),
        ("task-started", "b"),
        ("task-succeeded", "b"),
    ]
    assert succeeded == ["a", "b"]
    assert receiver.stats.messages == 1
    assert receiver.stats.events == 4


def test_limit_counts_events_not_messages(bus_url: str) -> None:
    receiver, seen = collecting(bus_url)
    dispatcher = Dispatcher(bus_url, buffer_group={"task"}, buffer_limit=5)
    for n in range(5):
        dispatcher.send("task-started", uuid=str(n))
    assert receiver.capture(limit=3, timeout=1) == 3
    assert [e["uuid"] for e in seen] == ["0", "1", "2"]


def test_binding_key_selects_routing_keys(bus_url: str) -> None:
    receiver, seen = collecting(bus_url, routing_key="worker.#")
    dispatcher = Dispatcher(bus_url)
    dispatcher.send("task-started", uuid="a")
    dispatcher.send("worker-heartbeat")
    receiver.capture(timeout=0.2)
    assert [e["type"] for e in seen] == ["worker-heartbeat"]


def test_client_side_filtering_where_the_transport_cannot_route() -> None:
    url = f"fakeredis://filter-{time.monotonic_ns()}"
    receiver, seen = collecting(url, routing_key="worker.#")
    dispatcher = Dispatcher(url)
    dispatcher.send("task-started", uuid="a")
    dispatcher.send("worker-heartbeat")
    receiver.capture(timeout=0.2)
    assert [e["type"] for e in seen] == ["worker-heartbeat"]
    assert receiver.stats.filtered == 1


def test_clock_rules_match_celery_vectors(bus_url: str) -> None:
    clock = LamportClock(10)
    receiver, seen = collecting(bus_url, clock=clock)
    raw_publish(bus_url, "task.sent", json.dumps({"type": "task-sent", "clock": 999}).encode())
    raw_publish(bus_url, "task.started", json.dumps({"type": "task-started", "clock": 50}).encode())
    raw_publish(bus_url, "custom.x", json.dumps({"type": "custom-x"}).encode())
    raw_publish(bus_url, "custom.y", json.dumps({"type": "custom-y", "clock": None}).encode())
    raw_publish(bus_url, "custom.z", json.dumps({"type": "custom-z", "clock": "7"}).encode())
    assert receiver.capture(limit=5, timeout=1) == 5
    assert seen[0]["clock"] == 9
    assert seen[1]["clock"] == 50
    assert seen[2]["clock"] == 52  # a missing clock gets a local forward()
    assert seen[3]["clock"] == 53  # null does not crash (Celery's receiver would)
    assert seen[4]["clock"] == 54
    assert clock.value == 54
    assert all(isinstance(e["local_received"], float) for e in seen)


def test_timestamps_stay_absolute_unless_localize(bus_url: str) -> None:
    body = json.dumps({"type": "worker-online", "timestamp": 1000.0, "utcoffset": -1.0}).encode()
    plain, seen_plain = collecting(bus_url)
    localizing, seen_local = collecting(bus_url, localize=True)
    raw_publish(bus_url, "worker.online", body)
    plain.capture(limit=1, timeout=1)
    localizing.capture(limit=1, timeout=1)
    assert seen_plain[0]["timestamp"] == 1000.0
    from evcore.nodename import utcoffset

    assert seen_local[0]["timestamp"] == 1000.0 - (-1.0 - utcoffset()) * 3600


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{not json", "application/json", "malformed"),
        (pickle.dumps({"type": "task-sent"}), "application/x-python-serialize", "content-type"),
        (b'{"type": "x-y"}', "application/yaml", "content-type"),
        (b'"just a string"', "application/json", "not-an-event"),
        (b'{"no": "type"}', "application/json", "not-an-event"),
        (b'{"type": 5}', "application/json", "not-an-event"),
        (b"[" * 5000 + b"]" * 5000, "application/json", "malformed"),
    ],
)
def test_bad_messages_are_counted_and_skipped(
    bus_url: str, body: bytes, content_type: str, reason: str
) -> None:
    receiver, seen = collecting(bus_url)
    raw_publish(bus_url, "task.x", body, content_type)
    raw_publish(bus_url, "worker.online", b'{"type": "worker-online", "clock": 1}')
    assert receiver.capture(limit=1, timeout=1) == 1
    assert [e["type"] for e in seen] == ["worker-online"]
    assert receiver.stats.rejected[reason] >= 1


def test_bad_elements_of_a_batch_are_skipped_alone(bus_url: str) -> None:
    receiver, seen = collecting(bus_url)
    started, succeeded = {"type": "task-started"}, {"type": "task-succeeded"}
    batch = [started, 42, None, succeeded]
    raw_publish(bus_url, "task.multi", json.dumps(batch).encode())
    assert receiver.capture(limit=2, timeout=1) == 2
    assert [e["type"] for e in seen] == ["task-started", "task-succeeded"]
    assert receiver.stats.rejected["not-an-event"] == 2


def test_oversized_messages_are_rejected_against_the_bound(bus_url: str) -> None:
    receiver, seen = collecting(bus_url, max_message_bytes=1000)
    Dispatcher(bus_url).send("custom-big", pad="x" * 2000)
    Dispatcher(bus_url).send("custom-small")
    assert receiver.capture(limit=1, timeout=1) == 1
    assert seen[0]["type"] == "custom-small"
    assert receiver.stats.rejected["too-large"] == 1


def test_handler_errors_are_counted_or_reraised(bus_url: str) -> None:
    def boom(event: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    receiver = Receiver(bus_url, handlers={"*": boom})
    dispatcher = Dispatcher(bus_url)
    dispatcher.send("custom-a")
    dispatcher.send("custom-b")
    assert receiver.capture(limit=2, timeout=1) == 2
    assert receiver.stats.handler_errors == 2
    strict = Receiver(bus_url, handlers={"*": boom}, raise_handler_errors=True)
    dispatcher.send("custom-c")
    with pytest.raises(RuntimeError, match="handler bug"):
        strict.capture(limit=1, timeout=1)


def test_should_stop_from_a_handler(bus_url: str) -> None:
    receiver: Receiver

    def stop(event: dict[str, Any]) -> None:
        receiver.should_stop = True

    receiver = Receiver(bus_url, handlers={"*": stop})
    dispatcher = Dispatcher(bus_url)
    for _ in range(3):
        dispatcher.send("custom-a")
    assert receiver.capture() == 1


def test_close_from_another_thread_ends_capture(bus_url: str) -> None:
    receiver, _ = collecting(bus_url)
    done = threading.Event()

    def run() -> None:
        receiver.capture()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.05)
    receiver.close()
    assert done.wait(5)


def test_timeout_returns_what_arrived(bus_url: str) -> None:
    receiver, _ = collecting(bus_url)
    assert receiver.capture(timeout=0.05) == 0


def test_receiver_reconnects_after_the_broker_comes_back(bus_url: str, bus: MemoryBus) -> None:
    receiver, seen = collecting(bus_url, reconnect_delay=(0.01, 0.05))
    dispatcher = Dispatcher(bus_url)
    bus.set_offline()
    threading.Timer(0.1, bus.set_offline, (False,)).start()

    def send_when_resubscribed() -> None:
        deadline = time.monotonic() + 5
        while receiver.stats.reconnects == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        dispatcher.send("custom-after")

    threading.Thread(target=send_when_resubscribed, daemon=True).start()
    assert receiver.capture(limit=1, timeout=5) == 1
    assert seen[0]["type"] == "custom-after"
    assert receiver.stats.reconnects == 1


def test_exclusive_and_durable_together_is_an_error() -> None:
    with pytest.raises(evcore.ConfigurationError):
        Receiver("memory://", queue_exclusive=True, queue_durable=True)


def test_queue_naming_and_options(bus_url: str) -> None:
    receiver = Receiver(
        bus_url, node_id="n1", queue_prefix="mon", queue_ttl=2.0, queue_expires=None
    )
    assert receiver.queue.name == "mon.n1"
    assert receiver.queue.message_ttl == 2.0
    assert receiver.queue.expires is None
    assert receiver.queue.exclusive and receiver.queue.auto_delete and not receiver.queue.durable
    durable = Receiver(bus_url, queue_exclusive=False, queue_durable=True)
    assert durable.queue.durable and not durable.queue.auto_delete
    assert len(Receiver(bus_url).queue.name) == len("celeryev.") + 36


def test_receiver_refuses_a_disabled_driver_type() -> None:
    with pytest.raises(evcore.EventsDisabled, match="sql"):
        Receiver("fakesql://rules")


def test_celery_aliases() -> None:
    assert evcore.EventReceiver is Receiver
    assert evcore.EventDispatcher is Dispatcher


def _wire_lines(name: str) -> list[dict[str, Any]]:
    with (SAMPLES / name).open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def test_wire_samples_decode_to_the_captured_events(bus_url: str) -> None:
    receiver, seen = collecting(bus_url)
    expected: list[dict[str, Any]] = []
    for line in _wire_lines("amqp.jsonl"):
        raw_publish(bus_url, line["routing_key"], line["body"].encode("utf-8"))
        decoded = line["decoded"]
        expected.extend(decoded if isinstance(decoded, list) else [decoded])
    assert receiver.capture(limit=len(expected), timeout=2) == len(expected)
    for got, want in zip(seen, expected, strict=True):
        assert got.pop("local_received")
        if want["type"] == "task-sent":
            got.pop("clock"), want.pop("clock")
        assert got == want


def test_redis_envelopes_unpack_to_the_captured_bodies() -> None:
    from evcore_adapter_helpers.envelope import unpack

    for line in _wire_lines("redis.jsonl"):
        message = unpack(line["payload"].encode("utf-8"))
        assert json.loads(message.body) == line["decoded"]
        assert message.content_type == "application/json"
        assert line["channel"].endswith(message.routing_key) or message.routing_key == ""


def test_rest_of_a_batch_is_kept_for_the_next_capture(bus_url: str) -> None:
    receiver, seen = collecting(bus_url)
    dispatcher = Dispatcher(bus_url, buffer_group={"task"}, buffer_limit=5)
    for n in range(5):
        dispatcher.send("task-started", uuid=str(n))
    assert receiver.capture(limit=2, timeout=1) == 2
    assert receiver.capture(limit=10, timeout=0.1) == 3
    assert [e["uuid"] for e in seen] == ["0", "1", "2", "3", "4"]


def test_messages_an_adapter_could_not_unpack_are_counted(bus_url: str) -> None:
    from evcore.transport import IncomingMessage

    receiver, seen = collecting(bus_url)
    broken = IncomingMessage(b"\xff", "task.started", rejected="malformed")
    assert receiver._events_of(broken) == []
    assert receiver.stats.rejected == {"malformed": 1}
    assert receiver.stats.messages == 1
    assert seen == []


def test_sequence_headers_of_the_wrong_type_are_ignored(bus_url: str) -> None:
    receiver, _ = collecting(bus_url)
    transport = evcore.connect(bus_url)
    body = json.dumps({"type": "custom-x", "clock": 1}).encode()
    for seq in (True, "2", 2.5, None):
        headers = {"hostname": "w", "evcore-boot": "b", "evcore-seq": seq}
        transport.publish(EXCHANGE, [OutgoingMessage("custom.x", body, headers)])
    assert receiver.capture(limit=4, timeout=1) == 4
    assert not receiver.stats.lost_events
    assert receiver.stats.duplicates == 0
