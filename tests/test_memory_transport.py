from __future__ import annotations

import threading
import time

import pytest

import evcore
from evcore.transport import Exchange, OutgoingMessage, QueueOptions, Subscription
from evcore_memory import MemoryBus, MemoryTransport

TOPIC = Exchange("ev", "topic")


def message(key: str, body: bytes = b"{}") -> OutgoingMessage:
    return OutgoingMessage(routing_key=key, body=body, headers={"hostname": "h"})


def bodies(subscription: Subscription) -> list[bytes]:
    return [m.body for m in subscription.receive(0)]


def test_named_buses_are_separate_and_default_is_shared(bus_url: str) -> None:
    one, same = evcore.connect(bus_url), evcore.connect(bus_url)
    other = evcore.connect(bus_url + "-other")
    assert isinstance(one, MemoryTransport)
    assert one.bus is same.bus  # type: ignore[attr-defined]
    assert one.bus is not other.bus  # type: ignore[attr-defined]
    assert evcore.connect("memory://").bus is evcore.connect("memory:///").bus  # type: ignore[attr-defined]


def test_topic_routing_and_fanout(bus_url: str) -> None:
    transport = evcore.connect(bus_url)
    workers = transport.subscribe(TOPIC, "worker.#", QueueOptions("q1"))
    everything = transport.subscribe(TOPIC, "#", QueueOptions("q2"))
    transport.publish(TOPIC, [message("worker.online", b"1"), message("task.sent", b"2")])
    assert bodies(workers) == [b"1"]
    assert bodies(everything) == [b"1", b"2"]
    fan = Exchange("fan", "fanout")
    sub = transport.subscribe(fan, "ignored.key", QueueOptions("q3"))
    transport.publish(fan, [message("anything", b"3")])
    assert bodies(sub) == [b"3"]


def test_only_queues_bound_before_publish_receive(bus_url: str) -> None:
    transport = evcore.connect(bus_url)
    transport.publish(TOPIC, [message("task.sent", b"early")])
    late = transport.subscribe(TOPIC, "#", QueueOptions("late"))
    transport.publish(TOPIC, [message("task.sent", b"later")])
    assert bodies(late) == [b"later"]


def test_exchange_type_conflict_is_a_channel_error(bus_url: str) -> None:
    transport = evcore.connect(bus_url)
    transport.publish(Exchange("x", "topic"), [message("a")])
    with pytest.raises(evcore.ChannelError, match=r"'x'.*'topic'.*'fanout'"):
        transport.publish(Exchange("x", "fanout"), [message("a")])


def test_exclusive_queue_and_max_length_drop_head(bus_url: str) -> None:
    transport = evcore.connect(bus_url)
    sub = transport.subscribe(TOPIC, "#", QueueOptions("only", max_length=2))
    with pytest.raises(evcore.ChannelError):
        transport.subscribe(TOPIC, "#", QueueOptions("only"))
    transport.publish(TOPIC, [message("k", bytes([n])) for n in range(5)])
    assert bodies(sub) == [b"\x03", b"\x04"]
    assert sub.dropped == 3  # type: ignore[attr-defined]


def test_message_ttl_expires_old_messages(bus_url: str) -> None:
    transport = evcore.connect(bus_url)
    sub = transport.subscribe(TOPIC, "#", QueueOptions("ttl", message_ttl=0.05))
    transport.publish(TOPIC, [message("k", b"old")])
    time.sleep(0.1)
    transport.publish(TOPIC, [message("k", b"new")])
    assert bodies(sub) == [b"new"]


def test_receive_waits_then_times_out_and_close_unblocks(bus_url: str) -> None:
    transport = evcore.connect(bus_url)
    sub = transport.subscribe(TOPIC, "#", QueueOptions("wait"))
    assert list(sub.receive(0.01)) == []
    result: list[object] = []
    waiter = threading.Thread(target=lambda: result.append(sub.receive(None)))
    waiter.start()
    time.sleep(0.05)
    sub.close()
    waiter.join(5)
    assert not waiter.is_alive()
    assert result == [[]]


def test_receive_wakes_on_publish_from_another_thread(bus_url: str) -> None:
    transport = evcore.connect(bus_url)
    sub = transport.subscribe(TOPIC, "#", QueueOptions("wake"))
    threading.Timer(0.05, transport.publish, (TOPIC, [message("k", b"hi")])).start()
    assert [m.body for m in sub.receive(5)] == [b"hi"]


def test_offline_bus_raises_connection_lost_and_recovers(bus_url: str, bus: MemoryBus) -> None:
    transport = evcore.connect(bus_url)
    sub = transport.subscribe(TOPIC, "#", QueueOptions("off"))
    bus.set_offline()
    with pytest.raises(evcore.ConnectionLost):
        transport.publish(TOPIC, [message("k")])
    with pytest.raises(evcore.ConnectionLost):
        sub.receive(0)
    with pytest.raises(evcore.ConnectionLost):
        transport.subscribe(TOPIC, "#", QueueOptions("off2"))
    bus.set_offline(False)
    again = transport.subscribe(TOPIC, "#", QueueOptions("off"))
    transport.publish(TOPIC, [message("k", b"back")])
    assert bodies(again) == [b"back"]
    with pytest.raises(evcore.ConnectionLost):  # the old subscription stays dead
        sub.receive(0)


def test_closed_transport_refuses_and_auto_delete_queue_goes(bus_url: str) -> None:
    transport = evcore.connect(bus_url)
    transport.subscribe(TOPIC, "#", QueueOptions("gone"))
    transport.close()
    transport.close()
    with pytest.raises(evcore.ConnectionLost):
        transport.publish(TOPIC, [message("k")])
    fresh = evcore.connect(bus_url)
    fresh.subscribe(TOPIC, "#", QueueOptions("gone"))  # the name is free again


def test_from_url_rejects_options_and_foreign_schemes() -> None:
    with pytest.raises(evcore.InvalidURL):
        MemoryTransport.from_url("memory://", flavour=1)
    with pytest.raises(evcore.InvalidURL):
        MemoryTransport.from_url("redis://x")
