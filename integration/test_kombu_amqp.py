"""The kombu bridge on a real RabbitMQ: broker-side topic routing, interchangeable with the
native AMQP transport in both directions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import kombu
import pytest

from evcore import Dispatcher, Receiver
from evcore.transport import (
    TOPIC,
    Exchange,
    IncomingMessage,
    OutgoingMessage,
    QueueOptions,
    Subscription,
    Transport,
)
from evcore_amqp import AMQPTransport
from evcore_kombu import KombuTransport

pytestmark = [pytest.mark.kombu, pytest.mark.amqp]


@pytest.fixture
def amqp_exchange(amqp_url: str, exchange_name: str) -> Iterator[str]:
    """A unique exchange name, deleted from the broker afterwards."""
    yield exchange_name
    with kombu.Connection(amqp_url) as connection:
        kombu.Exchange(exchange_name)(connection.default_channel).delete()


@pytest.fixture
def bridge(amqp_url: str) -> Iterator[KombuTransport]:
    transport = KombuTransport.from_url(f"kombu+{amqp_url}")
    yield transport
    transport.close()


@pytest.fixture
def native(amqp_url: str) -> Iterator[AMQPTransport]:
    transport = AMQPTransport.from_url(amqp_url)
    yield transport
    transport.close()


def _collect(
    subscription: Subscription, count: int, timeout: float = 10.0
) -> list[IncomingMessage]:
    got: list[IncomingMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(subscription.receive(timeout=0.5))
    return got


def test_the_bridge_reports_amqp_and_routes_on_the_broker(bridge: KombuTransport) -> None:
    assert bridge.driver_type == "amqp"
    assert bridge.capabilities.exact_routing
    with Dispatcher(bridge, hostname="w1@kombu") as dispatcher:
        assert dispatcher.exchange.type == TOPIC


@pytest.mark.parametrize("direction", ["native-to-bridge", "bridge-to-native"])
def test_messages_are_interchangeable_with_the_native_transport(
    bridge: KombuTransport, native: AMQPTransport, amqp_exchange: str, direction: str
) -> None:
    publisher: Transport = native if direction == "native-to-bridge" else bridge
    consumer: Transport = bridge if direction == "native-to-bridge" else native
    exchange = Exchange(amqp_exchange, TOPIC)
    subscription = consumer.subscribe(exchange, "task.*", QueueOptions(f"{amqp_exchange}.q"))
    sent = [
        OutgoingMessage("task.succeeded", b'{"type": "task-succeeded"}', {"hostname": "w1"}),
        OutgoingMessage("worker.heartbeat", b'{"type": "worker-heartbeat"}'),
        OutgoingMessage("task.multi", '[{"note": "caf\u00e9"}]'.encode()),
    ]
    try:
        publisher.publish(exchange, sent)
        got = _collect(subscription, 2)
        got.extend(subscription.receive(timeout=0.3))
    finally:
        subscription.close()
    assert [(m.routing_key, m.body) for m in got] == [
        ("task.succeeded", sent[0].body),
        ("task.multi", sent[2].body),
    ]
    assert all(m.exchange == amqp_exchange for m in got)
    assert all(m.content_type == "application/json" for m in got)
    assert all(m.content_encoding == "utf-8" for m in got)
    assert got[0].headers.get("hostname") == "w1"


@pytest.mark.parametrize(("sender", "receiver"), [("native", "bridge"), ("bridge", "native")])
def test_events_flow_between_native_and_bridge(
    amqp_url: str, amqp_exchange: str, sender: str, receiver: str
) -> None:
    urls = {"native": amqp_url, "bridge": f"kombu+{amqp_url}"}
    seen: list[dict[str, Any]] = []
    with (
        Receiver(
            urls[receiver],
            handlers={"*": seen.append},
            routing_key="task.#",
            exchange=amqp_exchange,
        ) as consumer,
        Dispatcher(urls[sender], hostname="w1@interop", exchange=amqp_exchange) as dispatcher,
    ):
        dispatcher.send("worker-online", freq=2.0)
        dispatcher.send("task-received", uuid="t1")
        dispatcher.send("task-succeeded", uuid="t1", result="42")
        assert consumer.capture(limit=2, timeout=10) == 2
    assert [(e["type"], e["hostname"]) for e in seen] == [
        ("task-received", "w1@interop"),
        ("task-succeeded", "w1@interop"),
    ]
