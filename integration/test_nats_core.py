"""NATS core pub/sub against a real server: wildcard mapping, hostile names, size limits,
slow readers, and the private loop thread."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from _net import wait_for

from evcore import Dispatcher, Receiver
from evcore.errors import ChannelError
from evcore.transport import FANOUT, TOPIC, Exchange, IncomingMessage, OutgoingMessage, QueueOptions
from evcore_nats import NatsSubscription, NatsTransport

pytestmark = pytest.mark.nats


def receive_until(subscription: NatsSubscription, count: int) -> list[IncomingMessage]:
    got: list[IncomingMessage] = []
    wait_for(lambda: bool(got.extend(subscription.receive(0.1))) or len(got) >= count, 10)
    return got


@pytest.fixture
def transport(nats_url: str) -> Iterator[NatsTransport]:
    opened = NatsTransport.from_url(nats_url)
    yield opened
    opened.close()


def test_hash_matching_no_word_arrives_and_a_middle_hash_is_filtered_by_the_core(
    transport: NatsTransport, nats_url: str, exchange_name: str
) -> None:
    exchange = Exchange(exchange_name, TOPIC)
    trailing = transport.subscribe(exchange, "worker.#", QueueOptions("q1"))
    middle = transport.subscribe(exchange, "#.online", QueueOptions("q2"))
    keys = ["worker", "worker.online", "task.online.x", "task.sent", "end.online"]
    transport.publish(exchange, [OutgoingMessage(key, key.encode()) for key in keys])

    assert [m.routing_key for m in receive_until(trailing, 2)] == ["worker", "worker.online"]
    # NATS cannot say "#.online": everything arrives and the core filters.
    assert [m.routing_key for m in receive_until(middle, 5)] == keys

    seen: list[str] = []
    with Receiver(nats_url, routing_key="#.heartbeat", exchange=exchange_name,
                  handlers={"*": lambda event: seen.append(event["type"])}) as receiver:
        with Dispatcher(nats_url, hostname="w1@nats", exchange=exchange_name) as dispatcher:
            dispatcher.send("worker-online")
            dispatcher.send("worker-heartbeat")
        assert receiver.capture(limit=1, timeout=10) == 1
    assert seen == ["worker-heartbeat"]
    assert receiver.stats.filtered == 1 and receiver.stats.messages == 2


def test_hostile_exchange_names_and_routing_keys_stay_apart(transport: NatsTransport) -> None:
    tag = uuid.uuid4().hex[:8]
    names = [f"{tag}", f"{tag}.x", f"{tag} x", f"{tag}.*", f"{tag}.>", f"{tag}%2Ex", f"{tag}\r\n"]
    subscriptions = {
        name: transport.subscribe(Exchange(name, FANOUT), "#", QueueOptions(name))
        for name in names
    }
    keys = ["x", "x y.z", ">", "*", "", "a..b", "\r\nPUB evil 1", "é.%"]
    for name in names:
        transport.publish(
            Exchange(name, FANOUT), [OutgoingMessage(key, name.encode()) for key in keys]
        )
    for name, subscription in subscriptions.items():
        got = receive_until(subscription, len(keys))
        assert [m.routing_key for m in got] == keys, name
        assert {m.body for m in got} == {name.encode()}, name
    assert transport.connections == 1


def test_oversized_messages_are_refused_counted_and_the_rest_delivered(
    transport: NatsTransport, nats_url: str, exchange_name: str
) -> None:
    exchange = Exchange(exchange_name, TOPIC)
    subscription = transport.subscribe(exchange, "#", QueueOptions("q"))
    batch = [
        OutgoingMessage("a", b"first"),
        OutgoingMessage("a", b"x" * (1 << 20)),
        OutgoingMessage("a" * 2000, b"long subject"),
        OutgoingMessage("a", b"last"),
    ]
    with pytest.raises(ChannelError, match="2 of 4 message"):
        transport.publish(exchange, batch)
    assert [m.body for m in receive_until(subscription, 2)] == [b"first", b"last"]
    assert (transport.stats.oversized, transport.stats.unsendable) == (1, 1)
    assert transport.connections == 1, "a refused message must not cost the connection"

    with Dispatcher(nats_url, hostname="w1@nats", exchange=exchange_name) as dispatcher:
        dispatcher.send("task-received", uuid="t1", args="x" * (1 << 20))
        dispatcher.send("task-started", uuid="t1")
        assert dispatcher.stats.events_refused == 1
        assert dispatcher.stats.events_sent == 1


def test_a_reader_that_falls_behind_loses_counted_events(
    nats_url: str, exchange_name: str
) -> None:
    with (
        Receiver(f"{nats_url}?max_buffered=5", exchange=exchange_name) as receiver,
        Dispatcher(nats_url, hostname="w1@nats", exchange=exchange_name) as dispatcher,
    ):
        for number in range(20):
            dispatcher.send("worker-heartbeat", number=number)
        subscription = receiver._subscription
        assert isinstance(subscription, NatsSubscription)
        assert wait_for(lambda: subscription.dropped == 15, 10)
        assert receiver.capture(limit=5, timeout=10) == 5
        dispatcher.send("worker-offline")
        assert receiver.capture(limit=1, timeout=10) == 1
    assert receiver.stats.lost_events["w1@nats"] == 15


def test_close_leaves_no_thread_behind(nats_url: str, exchange_name: str) -> None:
    before = set(threading.enumerate())
    transport = NatsTransport.from_url(nats_url)
    subscription = transport.subscribe(Exchange(exchange_name, TOPIC), "#", QueueOptions("q"))
    transport.publish(Exchange(exchange_name, TOPIC), [OutgoingMessage("a", b"x")])
    assert len(receive_until(subscription, 1)) == 1
    assert any(t.name == "evcore-nats-core" for t in threading.enumerate())
    transport.close()
    assert set(threading.enumerate()) <= before
