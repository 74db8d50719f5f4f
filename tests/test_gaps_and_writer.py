"""Sequence headers (gap detection), the losses they reveal reaching the State
(``Receiver(on_loss=state.record_loss)``), and the background writer, on the in-memory bus."""

from __future__ import annotations

import json
import threading
from typing import Any

import evcore
from evcore import Dispatcher, Receiver, State
from evcore.transport import Exchange, OutgoingMessage, QueueOptions
from evcore_memory import MemoryBus

EXCHANGE = Exchange("celeryev", "topic")


def test_sequence_numbers_count_events_across_batches(bus_url: str) -> None:
    tap = evcore.connect(bus_url).subscribe(EXCHANGE, "#", QueueOptions("tap"))
    dispatcher = Dispatcher(bus_url, buffer_group={"task"}, buffer_limit=3)
    for n in range(3):
        dispatcher.send("task-started", uuid=str(n))
    dispatcher.send("worker-heartbeat")
    seqs = [(m.routing_key, m.headers["evcore-seq"]) for m in tap.receive(0)]
    assert seqs == [("task.multi", 1), ("worker.heartbeat", 4)]


def test_receiver_counts_events_dropped_from_the_offline_buffer(
    bus_url: str, bus: MemoryBus
) -> None:
    seen: list[dict[str, Any]] = []
    dispatcher = Dispatcher(bus_url, hostname="w1@h", offline_buffer_limit=2)
    dispatcher.send("custom-n", n=0)  # before anyone listens: not a gap for the receiver
    receiver = Receiver(bus_url, handlers={"*": seen.append})
    dispatcher.send("custom-n", n=1)
    assert receiver.capture(limit=1, timeout=1) == 1
    bus.set_offline()
    for n in range(2, 7):  # 5 events, the buffer keeps the last 2
        dispatcher.send("custom-n", n=n)
    bus.set_offline(False)
    receiver._drop_subscription()  # the old queue went with the outage
    receiver.capture(timeout=0.05)  # resubscribes
    dispatcher.flush()
    dispatcher.send("custom-n", n=7)
    receiver.capture(timeout=0.2)
    assert [e["n"] for e in seen] == [1, 5, 6, 7]
    assert dispatcher.offline_buffer.dropped_events == 3
    assert receiver.stats.lost_events == {"w1@h": 3}


def test_duplicate_messages_are_dropped_and_counted(bus_url: str) -> None:
    seen: list[dict[str, Any]] = []
    receiver = Receiver(bus_url, handlers={"*": seen.append})
    transport = evcore.connect(bus_url)
    headers = {"hostname": "w", "evcore-boot": "b1", "evcore-seq": 1}
    body = json.dumps({"type": "custom-x", "clock": 1}).encode()
    message = OutgoingMessage("custom.x", body, headers)
    transport.publish(EXCHANGE, [message, message])
    receiver.capture(timeout=0.1)
    assert len(seen) == 1
    assert receiver.stats.duplicates == 1
    assert not receiver.stats.lost_events


def lose_three(bus_url: str, bus: MemoryBus, receiver: Receiver, dispatcher: Dispatcher) -> None:
    """w1 sends 1, then 3 events nobody receives (a dropped subscription), then 1 more."""
    dispatcher.send("worker-online")
    receiver.capture(limit=1, timeout=1)
    bus.set_offline()  # the receiver's queue goes with the outage
    bus.set_offline(False)
    for _ in range(3):
        dispatcher.send("worker-heartbeat")  # published, but no queue is bound yet
    receiver.capture(timeout=0.05)  # resubscribes
    dispatcher.send("worker-offline")
    receiver.capture(limit=1, timeout=1)


def test_state_counts_the_events_the_receiver_found_missing(bus_url: str, bus: MemoryBus) -> None:
    state = State()
    receiver = Receiver(bus_url, handlers={"*": state.event}, on_loss=state.record_loss)
    dispatcher = Dispatcher(bus_url, hostname="w1@h")
    lose_three(bus_url, bus, receiver, dispatcher)
    assert receiver.stats.lost_events == {"w1@h": 3}
    assert state.lost_events == {"w1@h": 3}
    assert state.event_count == 2
    receiver.close()
    dispatcher.close()


def test_a_failing_loss_callback_is_counted_not_raised(bus_url: str, bus: MemoryBus) -> None:
    calls: list[tuple[str, int]] = []

    def broken(hostname: str, count: int) -> Any:
        calls.append((hostname, count))
        raise RuntimeError("monitor bug")

    receiver = Receiver(bus_url, on_loss=broken)
    dispatcher = Dispatcher(bus_url, hostname="w1@h")
    lose_three(bus_url, bus, receiver, dispatcher)
    assert calls == [("w1@h", 3)]
    assert receiver.stats.handler_errors == 1
    assert receiver.stats.lost_events == {"w1@h": 3}
    receiver.close()
    dispatcher.close()


def test_record_loss_accumulates_per_sender() -> None:
    state = State()
    state.record_loss("w1", 2)
    state.record_loss("w2", 1)
    state.record_loss("w1", 5)
    assert state.lost_events == {"w1": 7, "w2": 1}


def test_background_writer_delivers_everything_in_order(bus_url: str) -> None:
    tap = evcore.connect(bus_url).subscribe(EXCHANGE, "#", QueueOptions("tap", max_length=None))
    dispatcher = Dispatcher(bus_url, background=True, linger=0.001)
    for n in range(2000):
        dispatcher.send("custom-n", n=n)
    dispatcher.flush()
    assert dispatcher.pending_events == 0
    got = [json.loads(m.body)["n"] for m in tap.receive(0)]
    assert got == list(range(2000))
    assert dispatcher.stats.events_sent == 2000
    assert dispatcher.stats.messages_sent == 2000
    dispatcher.close()


def test_background_writer_close_delivers_what_was_accepted(bus_url: str) -> None:
    tap = evcore.connect(bus_url).subscribe(EXCHANGE, "#", QueueOptions("tap"))
    dispatcher = Dispatcher(bus_url, background=True, buffer_group={"task"})
    for n in range(100):
        dispatcher.send("custom-n", n=n)
    dispatcher.send("task-started", uuid="last")
    dispatcher.close()
    messages = list(tap.receive(0))
    assert len(messages) == 101
    assert messages[-1].routing_key == "task.multi"


def test_background_writer_buffers_while_offline_and_keeps_order(
    bus_url: str, bus: MemoryBus
) -> None:
    dispatcher = Dispatcher(bus_url, background=True)
    bus.set_offline()
    for n in range(50):
        dispatcher.send("custom-n", n=n)
    dispatcher.flush()
    assert len(dispatcher.offline_buffer) == 50
    bus.set_offline(False)
    tap = evcore.connect(bus_url).subscribe(EXCHANGE, "#", QueueOptions("tap"))
    for n in range(50, 60):
        dispatcher.send("custom-n", n=n)
    dispatcher.flush()
    assert [json.loads(m.body)["n"] for m in tap.receive(0)] == list(range(60))
    dispatcher.close()


def test_many_threads_sending_through_the_background_writer(bus_url: str) -> None:
    tap = evcore.connect(bus_url).subscribe(EXCHANGE, "#", QueueOptions("tap"))
    dispatcher = Dispatcher(bus_url, background=True, max_pending=64)

    def send_many(tag: int) -> None:
        for n in range(500):
            dispatcher.send("custom-n", tag=tag, n=n)

    threads = [threading.Thread(target=send_many, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    dispatcher.close()
    events = [json.loads(m.body) for m in tap.receive(0)]
    assert len(events) == 2000
    clocks = [e["clock"] for e in events]
    assert clocks == sorted(clocks)  # clock order is publish order
    for tag in range(4):
        assert [e["n"] for e in events if e["tag"] == tag] == list(range(500))
