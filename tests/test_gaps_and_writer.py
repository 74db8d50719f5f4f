"""Sequence headers (gap detection) and the background writer, on the in-memory bus."""

from __future__ import annotations

import json
import threading
from typing import Any

import evcore
from evcore import Dispatcher, Receiver
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
