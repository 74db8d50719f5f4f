"""The kombu bridge on real Redis and RabbitMQ: the exchange type of each broker, and messages
and events interchangeable with the native transport in both directions.

Each test runs once per broker. Redis-only behaviour (kombu's channel names, envelope and
binding table, a restarted server) is in ``test_kombu_redis.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import kombu
import pytest

from evcore import Dispatcher, Receiver
from evcore.transport import (
    FANOUT,
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
from evcore_redis import RedisTransport

pytestmark = pytest.mark.kombu

#: The Redis database of these tests: its number is part of every channel name.
KOMBU_DB = 10


@dataclass(frozen=True)
class Broker:
    """One broker as the bridge and the native transport reach it."""

    name: str
    native_url: str
    exchange: str
    #: The exchange type a Dispatcher declares over the bridge (kombu's Redis is fanout).
    exchange_type: str
    #: The binding of the interchange test, and the routing keys it must deliver.
    binding_key: str
    delivered: tuple[str, ...]

    @property
    def bridge_url(self) -> str:
        return f"kombu+{self.native_url}"

    def native(self) -> Transport:
        if self.name == "redis":
            return RedisTransport.from_url(self.native_url)
        return AMQPTransport.from_url(self.native_url)


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp", marks=pytest.mark.amqp),
    ]
)
def broker(request: pytest.FixtureRequest, exchange_name: str) -> Iterator[Broker]:
    if request.param == "redis":
        parts = urlsplit(request.getfixturevalue("redis_url"))
        url = urlunsplit((parts.scheme, parts.netloc, f"/{KOMBU_DB}", "", ""))
        keys = ("task.succeeded", "task.multi", "worker.heartbeat")
        yield Broker("redis", url, exchange_name, FANOUT, "#", keys)
        return
    url = request.getfixturevalue("amqp_url")
    yield Broker("amqp", url, exchange_name, TOPIC, "task.*", ("task.succeeded", "task.multi"))
    with kombu.Connection(url) as connection:
        kombu.Exchange(exchange_name)(connection.default_channel).delete()


@pytest.fixture
def bridge(broker: Broker) -> Iterator[KombuTransport]:
    transport = KombuTransport.from_url(broker.bridge_url)
    yield transport
    transport.close()


@pytest.fixture
def native(broker: Broker) -> Iterator[Transport]:
    transport = broker.native()
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


MESSAGES = [
    OutgoingMessage(
        "task.succeeded",
        b'{"type": "task-succeeded", "uuid": "abc", "result": "42"}',
        headers={"hostname": "w1@host"},
    ),
    OutgoingMessage("task.multi", b'[{"type": "task-received"}, {"type": "task-started"}]'),
    OutgoingMessage(
        "worker.heartbeat",
        '{"type": "worker-heartbeat", "note": "caf\u00e9 \u2603"}'.encode(),
        headers={"hostname": "w2@host", "n": 2},
    ),
]


def _as_received(exchange: str, message: OutgoingMessage) -> IncomingMessage:
    return IncomingMessage(
        body=message.body,
        routing_key=message.routing_key,
        exchange=exchange,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=dict(message.headers),
    )


def test_the_bridge_reports_its_broker_and_dispatches_on_its_exchange_type(
    broker: Broker, bridge: KombuTransport
) -> None:
    assert bridge.driver_type == broker.name
    if broker.name == "amqp":
        assert bridge.capabilities.exact_routing
    with Dispatcher(bridge, hostname="w1@kombu") as dispatcher:
        assert dispatcher.exchange.type == broker.exchange_type


@pytest.mark.parametrize("direction", ["native-to-bridge", "bridge-to-native"])
def test_messages_are_interchangeable_with_the_native_transport(
    broker: Broker, bridge: KombuTransport, native: Transport, direction: str
) -> None:
    publisher: Transport = native if direction == "native-to-bridge" else bridge
    consumer: Transport = bridge if direction == "native-to-bridge" else native
    exchange = Exchange(broker.exchange, broker.exchange_type)
    queue = QueueOptions(f"{broker.exchange}.q{time.monotonic_ns()}")
    subscription = consumer.subscribe(exchange, broker.binding_key, queue)
    try:
        publisher.publish(exchange, MESSAGES)
        got = _collect(subscription, len(broker.delivered))
        got.extend(subscription.receive(timeout=0.3))  # nothing more arrives
    finally:
        subscription.close()
    assert [m.routing_key for m in got] == list(broker.delivered)
    sent = {message.routing_key: message for message in MESSAGES}
    assert [m.body for m in got] == [sent[key].body for key in broker.delivered]
    assert all(m.exchange == broker.exchange for m in got)
    assert all(m.content_type == "application/json" for m in got)
    assert all(m.content_encoding == "utf-8" for m in got)
    assert got[0].headers.get("hostname") == "w1@host"
    if broker.name == "redis":  # kombu's envelope carries exactly what was published
        assert got == [_as_received(broker.exchange, sent[key]) for key in broker.delivered]


@pytest.mark.parametrize(
    ("sender", "receiver"), [("native", "bridge"), ("bridge", "native"), ("bridge", "bridge")]
)
def test_events_flow_between_native_and_bridge_dispatchers_and_receivers(
    broker: Broker, sender: str, receiver: str
) -> None:
    urls = {"native": broker.native_url, "bridge": broker.bridge_url}
    seen: list[dict[str, Any]] = []
    with (
        Receiver(
            urls[receiver],
            handlers={"*": seen.append},
            routing_key="task.#",
            exchange=broker.exchange,
        ) as consumer,
        Dispatcher(
            urls[sender],
            hostname="w1@interop",
            exchange=broker.exchange,
            buffer_group=["task"],
            buffer_limit=2,
        ) as dispatcher,
    ):
        dispatcher.send("worker-online", freq=2.0)  # filtered out by the binding key
        dispatcher.send("task-received", uuid="t1")
        dispatcher.send("task-succeeded", uuid="t1", result="42")  # fills the batch
        assert consumer.capture(limit=2, timeout=10) == 2
    assert [(e["type"], e["uuid"], e["hostname"]) for e in seen] == [
        ("task-received", "t1", "w1@interop"),
        ("task-succeeded", "t1", "w1@interop"),
    ]
