"""The Redis transport against a real Redis: wire layout, delivery, draining, closing, kills."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from _net import wait_for
from _redis_support import admin, client_name, clients_named, kill_clients, with_db

from evcore import Dispatcher, Receiver
from evcore.errors import ChannelError, ConnectionLost
from evcore.transport import FANOUT, Exchange, IncomingMessage, OutgoingMessage, QueueOptions
from evcore_redis import RedisSubscription, RedisTransport

pytestmark = pytest.mark.redis

QUEUE = QueueOptions("celeryev.test")


@pytest.fixture
def url(redis_url: str) -> str:
    return with_db(redis_url)


@pytest.fixture
def probe(url: str) -> Iterator[redis.Redis]:
    client = admin(url)
    yield client
    client.close()


@pytest.fixture
def transport(url: str) -> Iterator[RedisTransport]:
    transport = RedisTransport.from_url(url, client_name=client_name())
    yield transport
    transport.close()


def receive_n(
    subscription: RedisSubscription, count: int, timeout: float = 5.0
) -> list[IncomingMessage]:
    got: list[IncomingMessage] = []
    wait_for(lambda: bool(got.extend(subscription.receive(0.2))) or len(got) >= count, timeout)
    return got


def raw_listener(client: redis.Redis, pattern: str) -> redis.client.PubSub:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(pattern)
    assert wait_for(lambda: pubsub.get_message(timeout=0.1) is None and pubsub.subscribed, 5)
    return pubsub


def next_raw(pubsub: redis.client.PubSub, timeout: float = 5.0) -> dict[str, object]:
    found: list[dict[str, object]] = []

    def arrived() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "pmessage":
            found.append(message)
        return bool(found)

    assert wait_for(arrived, timeout), "no message arrived"
    return found[0]


def test_publish_writes_kombus_envelope_on_kombus_channel(
    transport: RedisTransport, probe: redis.Redis, exchange_name: str
) -> None:
    listener = raw_listener(probe, f"/9.{exchange_name}/*")
    body = b'{"hostname": "w1@host", "type": "task-succeeded"}'
    transport.publish(
        Exchange(exchange_name, FANOUT),
        [OutgoingMessage("task.succeeded", body, {"hostname": "w1@host"})],
    )
    raw = next_raw(listener)
    listener.close()
    assert raw["channel"] == f"/9.{exchange_name}/task.succeeded".encode()
    assert isinstance(raw["data"], bytes)
    envelope = json.loads(raw["data"])
    assert list(envelope) == ["body", "content-encoding", "content-type", "headers", "properties"]
    assert base64.b64decode(envelope["body"]) == body
    assert envelope["content-encoding"] == "utf-8"
    assert envelope["content-type"] == "application/json"
    assert envelope["headers"] == {"hostname": "w1@host"}
    properties = envelope["properties"]
    assert list(properties) == [
        "delivery_mode",
        "delivery_info",
        "priority",
        "body_encoding",
        "delivery_tag",
    ]
    assert properties["delivery_info"] == {
        "exchange": exchange_name,
        "routing_key": "task.succeeded",
    }
    assert (properties["delivery_mode"], properties["priority"]) == (1, 0)
    assert properties["body_encoding"] == "base64"
    assert uuid.UUID(properties["delivery_tag"]).version == 4


def test_batch_arrives_in_order_with_routing_keys(
    transport: RedisTransport, exchange_name: str
) -> None:
    exchange = Exchange(exchange_name, FANOUT)
    subscription = transport.subscribe(exchange, "#", QUEUE)
    messages = [
        OutgoingMessage(f"task.n{index}", f'{{"n": {index}}}'.encode(), {"i": index})
        for index in range(200)
    ]
    transport.publish(exchange, messages)
    got = receive_n(subscription, 200)
    assert [m.body for m in got] == [m.body for m in messages]
    assert [m.routing_key for m in got] == [f"task.n{index}" for index in range(200)]
    assert got[7].headers == {"i": 7}
    assert {m.exchange for m in got} == {exchange_name}


def test_delivery_tags_are_fresh_per_message(
    transport: RedisTransport, probe: redis.Redis, exchange_name: str
) -> None:
    listener = raw_listener(probe, f"/9.{exchange_name}/*")
    message = OutgoingMessage("a.b", b"{}")
    transport.publish(Exchange(exchange_name, FANOUT), [message, message])
    tags = {json.loads(next_raw(listener)["data"])["properties"]["delivery_tag"] for _ in "ab"}
    listener.close()
    assert len(tags) == 2


def test_receive_returns_a_whole_burst_in_one_call(url: str, exchange_name: str) -> None:
    transport = RedisTransport.from_url(url)
    exchange = Exchange(exchange_name, FANOUT)
    subscription = transport.subscribe(exchange, "#", QUEUE)
    transport.publish(exchange, [OutgoingMessage("x.y", b"1")] * 50)
    # A round trip on another connection after the burst: by the time it returns, Redis
    # has written the whole burst to the subscriber's socket (a PING would not do: it
    # does not pass through the subscriber's output buffer, a publish does).
    probe = admin(url)
    assert probe.publish(f"/9.{exchange_name}/marker", b"not an envelope") == 1
    first = subscription.receive(5.0)
    probe.close()
    transport.close()
    assert [m.body for m in first if m.rejected is None] == [b"1"] * 50
    assert subscription.rejected in (0, 1)


def test_max_drain_bounds_one_receive(url: str, exchange_name: str) -> None:
    transport = RedisTransport.from_url(url, max_drain=10)
    exchange = Exchange(exchange_name, FANOUT)
    subscription = transport.subscribe(exchange, "#", QUEUE)
    transport.publish(exchange, [OutgoingMessage("x.y", b"1")] * 25)
    sizes: list[int] = []
    wait_for(lambda: bool(sizes.append(len(subscription.receive(0.2)))) or sum(sizes) >= 25, 5)
    transport.close()
    assert sum(sizes) == 25
    assert max(sizes) <= 10


def test_a_subscriber_away_misses_events(transport: RedisTransport, exchange_name: str) -> None:
    exchange = Exchange(exchange_name, FANOUT)
    transport.publish(exchange, [OutgoingMessage("lost.before", b"0")])
    subscription = transport.subscribe(exchange, "#", QUEUE)
    transport.publish(exchange, [OutgoingMessage("seen.after", b"1")])
    got = receive_n(subscription, 1)
    assert subscription.receive(0.2) == []
    assert [m.routing_key for m in got] == ["seen.after"]


def test_narrow_binding_subscribes_narrowly(transport: RedisTransport, exchange_name: str) -> None:
    exchange = Exchange(exchange_name, FANOUT)
    subscription = transport.subscribe(exchange, "worker.#", QUEUE)
    keys = ["task.sent", "worker", "worker.heartbeat", "task.multi", "worker.offline"]
    transport.publish(exchange, [OutgoingMessage(key, b"{}") for key in keys])
    got = receive_n(subscription, 2)
    assert subscription.receive(0.3) == []
    # kombu's pattern worker.* does not cover the bare key "worker"; neither does Celery.
    assert [m.routing_key for m in got] == ["worker.heartbeat", "worker.offline"]


@pytest.mark.parametrize(
    ("options", "channel"),
    [
        ({"fanout_patterns": False}, "/9.{ex}"),
        ({"fanout_prefix": False}, "{ex}/task.multi"),
        ({"fanout_prefix": "/old{db}."}, "/old9.{ex}/task.multi"),
        ({"global_keyprefix": "tenant1:"}, "tenant1:/9.{ex}/task.multi"),
    ],
)
def test_older_layouts_round_trip(
    url: str, probe: redis.Redis, exchange_name: str, options: dict[str, object], channel: str
) -> None:
    transport = RedisTransport.from_url(url, **options)
    exchange = Exchange(exchange_name, FANOUT)
    subscription = transport.subscribe(exchange, "#", QUEUE)
    listener = raw_listener(probe, channel.format(ex=exchange_name).replace("*", r"\*"))
    transport.publish(exchange, [OutgoingMessage("task.multi", b"[1]")])
    raw = next_raw(listener)
    got = receive_n(subscription, 1)
    listener.close()
    transport.close()
    assert raw["channel"] == channel.format(ex=exchange_name).encode()
    assert [(m.body, m.routing_key) for m in got] == [(b"[1]", "task.multi")]


def test_routing_key_recovered_from_channel_when_envelope_lacks_it(
    transport: RedisTransport, probe: redis.Redis, exchange_name: str
) -> None:
    subscription = transport.subscribe(Exchange(exchange_name, FANOUT), "#", QUEUE)
    envelope = {
        "body": base64.b64encode(b'{"type": "x-y"}').decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {},
        "properties": {"body_encoding": "base64", "delivery_tag": "t"},
    }
    probe.publish(f"/9.{exchange_name}/custom.phase", json.dumps(envelope))
    got = receive_n(subscription, 1)
    assert [(m.routing_key, m.exchange, m.body) for m in got] == [
        ("custom.phase", exchange_name, b'{"type": "x-y"}')
    ]


def test_garbage_is_dropped_and_counted(
    transport: RedisTransport, probe: redis.Redis, exchange_name: str
) -> None:
    exchange = Exchange(exchange_name, FANOUT)
    subscription = transport.subscribe(exchange, "#", QUEUE)
    probe.publish(f"/9.{exchange_name}/a.b", b"\xff not json")
    transport.publish(exchange, [OutgoingMessage("a.c", b"{}")])
    got = receive_n(subscription, 2)
    assert [(m.routing_key, m.rejected) for m in got] == [("a.b", "malformed"), ("a.c", None)]
    assert subscription.rejected == 1


def test_close_wakes_a_blocked_receive(transport: RedisTransport, exchange_name: str) -> None:
    subscription = transport.subscribe(Exchange(exchange_name, FANOUT), "#", QUEUE)
    results: list[object] = []
    reader = threading.Thread(target=lambda: results.append(subscription.receive(None)))
    reader.start()
    assert wait_for(subscription._io.locked, 5)
    subscription.close()
    reader.join(10)
    assert not reader.is_alive()
    assert results == [[]]
    assert subscription.receive(0.1) == []


def test_transport_close_closes_subscriptions_and_connections(
    url: str, probe: redis.Redis, exchange_name: str
) -> None:
    name = client_name()
    transport = RedisTransport.from_url(url, client_name=name)
    exchange = Exchange(exchange_name, FANOUT)
    subscription = transport.subscribe(exchange, "#", QUEUE)
    transport.publish(exchange, [OutgoingMessage("a", b"{}")])
    assert len(clients_named(probe, name)) == 2
    transport.close()
    transport.close()
    assert subscription.closed
    assert wait_for(lambda: not clients_named(probe, name), 5)


def test_killed_subscription_raises_connection_lost_and_can_resubscribe(
    url: str, probe: redis.Redis, exchange_name: str
) -> None:
    name = client_name()
    transport = RedisTransport.from_url(url, client_name=name)
    exchange = Exchange(exchange_name, FANOUT)
    subscription = transport.subscribe(exchange, "#", QUEUE)
    assert kill_clients(probe, name) == 1
    with pytest.raises(ConnectionLost, match="receiving"):
        subscription.receive(5.0)
    with pytest.raises(ConnectionLost, match="subscribe again"):
        subscription.receive(0.1)
    subscription.close()
    again = transport.subscribe(exchange, "#", QUEUE)
    transport.publish(exchange, [OutgoingMessage("after.kill", b"{}")])
    assert [m.routing_key for m in receive_n(again, 1)] == ["after.kill"]
    transport.close()


def test_killed_publisher_raises_connection_lost_then_reconnects(
    url: str, probe: redis.Redis, exchange_name: str
) -> None:
    name = client_name()
    publisher = RedisTransport.from_url(url, client_name=name)
    reader = RedisTransport.from_url(url)
    exchange = Exchange(exchange_name, FANOUT)
    subscription = reader.subscribe(exchange, "#", QUEUE)
    publisher.publish(exchange, [OutgoingMessage("before", b"{}")])
    assert kill_clients(probe, name) == 1
    with pytest.raises(ConnectionLost, match="publishing"):
        publisher.publish(exchange, [OutgoingMessage("maybe.lost", b"{}")])
    publisher.publish(exchange, [OutgoingMessage("after", b"{}")])
    keys = [m.routing_key for m in receive_n(subscription, 2)]
    publisher.close()
    reader.close()
    assert keys[0] == "before"
    assert keys[-1] == "after"


def test_idle_subscription_survives_health_checks(url: str, exchange_name: str) -> None:
    transport = RedisTransport.from_url(url, health_check_interval=0.05)
    exchange = Exchange(exchange_name, FANOUT)
    subscription = transport.subscribe(exchange, "#", QUEUE)
    assert subscription.receive(0.5) == []
    transport.publish(exchange, [OutgoingMessage("still.alive", b"{}")])
    assert [m.routing_key for m in receive_n(subscription, 1)] == ["still.alive"]
    transport.close()


def test_wrong_password_is_a_channel_error(url: str, exchange_name: str) -> None:
    transport = RedisTransport.from_url(url, username="evcore-nobody", password="wrong")
    exchange = Exchange(exchange_name, FANOUT)
    with pytest.raises(ChannelError):
        transport.publish(exchange, [OutgoingMessage("a", b"{}")])
    with pytest.raises(ChannelError):
        transport.subscribe(exchange, "#", QUEUE)
    transport.close()


def test_dispatcher_to_receiver_over_redis(url: str, exchange_name: str) -> None:
    receiver = Receiver(url, exchange=exchange_name)
    dispatcher = Dispatcher(
        url, hostname="w1@evtest", exchange=exchange_name, buffer_group=["task"]
    )
    dispatcher.send("worker-online", freq=2.0)
    for state in ("received", "started", "succeeded"):
        dispatcher.send(f"task-{state}", uuid="t1")
    dispatcher.flush()
    seen = [event["type"] for event in receiver.itercapture(limit=4, timeout=10)]
    dispatcher.close()
    receiver.close()
    assert seen == ["worker-online", "task-received", "task-started", "task-succeeded"]


def test_receiver_binding_key_is_exact_despite_glob(url: str, exchange_name: str) -> None:
    receiver = Receiver(url, exchange=exchange_name, routing_key="worker.*")
    dispatcher = Dispatcher(url, hostname="w1@evtest", exchange=exchange_name)
    dispatcher.send("worker-heartbeat", freq=2.0)
    dispatcher.publish("worker-custom-deep", {})  # routing key worker.custom.deep
    dispatcher.send("worker-offline")
    seen = [event["type"] for event in receiver.itercapture(limit=2, timeout=10)]
    dispatcher.close()
    receiver.close()
    assert seen == ["worker-heartbeat", "worker-offline"]
    assert receiver.stats.filtered == 1
