"""The kombu bridge on a real Redis, what only Redis has: kombu's channel names, envelope and
binding table, and a server of the test's own stopped and started again. What both brokers
share (exchange type, interchange with the native transport) is in ``test_kombu_bridge.py``."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from _redis_support import PrivateRedis

from evcore import Dispatcher, Receiver
from evcore.errors import ConnectionLost
from evcore.transport import (
    FANOUT,
    Exchange,
    IncomingMessage,
    OutgoingMessage,
    QueueOptions,
    Subscription,
)
from evcore_kombu import KombuTransport

pytestmark = [pytest.mark.kombu, pytest.mark.redis]

#: The database of these tests: its number is part of every channel name.
KOMBU_DB = 10


@pytest.fixture
def native_url(redis_url: str) -> str:
    parts = urlsplit(redis_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{KOMBU_DB}", "", ""))


@pytest.fixture
def bridge_url(native_url: str) -> str:
    return f"kombu+{native_url}"


@pytest.fixture
def raw(native_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(native_url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def bridge(bridge_url: str) -> Iterator[KombuTransport]:
    transport = KombuTransport.from_url(bridge_url)
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


def _queue(exchange_name: str) -> QueueOptions:
    return QueueOptions(f"{exchange_name}.q{time.monotonic_ns()}")


def test_published_events_use_kombus_channels_and_envelope(
    bridge_url: str, raw: redis.Redis, exchange_name: str
) -> None:
    pubsub = raw.pubsub()
    pubsub.psubscribe(f"/{KOMBU_DB}.{exchange_name}/*")
    try:
        confirmed = pubsub.get_message(timeout=5)
        assert confirmed is not None
        assert confirmed["type"] == "psubscribe"
        with Dispatcher(bridge_url, hostname="w1@kombu", exchange=exchange_name) as dispatcher:
            dispatcher.send("task-succeeded", uuid="abc", result="42", runtime=0.5)
        message = None
        deadline = time.monotonic() + 10
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
    finally:
        pubsub.close()
    assert message is not None
    assert message["channel"] == f"/{KOMBU_DB}.{exchange_name}/task.succeeded".encode()
    envelope = json.loads(message["data"])
    assert envelope["content-type"] == "application/json"
    assert envelope["content-encoding"] == "utf-8"
    assert envelope["headers"]["hostname"] == "w1@kombu"
    properties = envelope["properties"]
    assert properties["body_encoding"] == "base64"
    assert properties["delivery_info"] == {
        "exchange": exchange_name,
        "routing_key": "task.succeeded",
    }
    assert properties["delivery_mode"] == 1
    event = json.loads(base64.b64decode(envelope["body"]))
    assert (event["type"], event["uuid"], event["hostname"]) == (
        "task-succeeded",
        "abc",
        "w1@kombu",
    )


def test_closing_a_subscription_removes_its_binding(
    bridge: KombuTransport, raw: redis.Redis, exchange_name: str
) -> None:
    queue = _queue(exchange_name)
    subscription = bridge.subscribe(Exchange(exchange_name, FANOUT), "#", queue)
    table = f"_kombu.binding.{exchange_name}"
    assert any(queue.name.encode() in member for member in raw.smembers(table))
    subscription.close()
    assert not any(queue.name.encode() in member for member in raw.smembers(table))


# -- a Redis of the test's own, stopped and started again -----------------------------------


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    private = PrivateRedis()
    private.start()
    yield private
    private.stop()


def test_lost_redis_is_connection_lost_then_the_bridge_recovers(
    server: PrivateRedis, exchange_name: str
) -> None:
    transport = KombuTransport.from_url(f"kombu+{server.url}")
    exchange = Exchange(exchange_name, FANOUT)
    try:
        subscription = transport.subscribe(exchange, "#", _queue(exchange_name))
        transport.publish(exchange, [OutgoingMessage("task.sent", b"before")])
        assert [m.body for m in _collect(subscription, 1)] == [b"before"]

        server.stop()
        with pytest.raises(ConnectionLost):
            transport.publish(exchange, [OutgoingMessage("task.sent", b"lost")])
        with pytest.raises(ConnectionLost):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                subscription.receive(timeout=0.5)
        subscription.close()

        server.start()
        again = transport.subscribe(exchange, "#", _queue(exchange_name))
        transport.publish(exchange, [OutgoingMessage("task.sent", b"after")])
        assert [m.body for m in _collect(again, 1)] == [b"after"]
    finally:
        transport.close()


def test_a_receiver_on_the_bridge_resubscribes_after_a_restart(
    server: PrivateRedis, exchange_name: str
) -> None:
    url = f"kombu+{server.url}"
    seen: list[str] = []
    with (
        Receiver(
            url,
            handlers={"*": lambda event: seen.append(event["note"])},
            exchange=exchange_name,
            reconnect_delay=(0.05, 0.5),
        ) as receiver,
        Dispatcher(url, hostname="w1@restart", exchange=exchange_name) as dispatcher,
    ):
        dispatcher.send("custom-note", note="before")
        assert receiver.capture(limit=1, timeout=10) == 1
        server.stop()
        server.start()
        # Pub/sub loses what is sent while the receiver is away: keep sending until one
        # sent after its resubscription arrives (bounded by count and time).
        for attempt in range(40):
            dispatcher.send("custom-note", note=f"after-{attempt}")
            if receiver.capture(limit=1, timeout=0.5):
                break
    assert seen[0] == "before"
    assert len(seen) == 2
    assert seen[1].startswith("after-")
    assert receiver.stats.reconnects >= 1
