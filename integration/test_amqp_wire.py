"""The AMQP transport on a real RabbitMQ: what it declares and sends, Celery's captured
messages, refusals, oversized messages, confirms and closing from another thread."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from _amqp_support import ADAPTER_PATHS, delete_exchanges, probe, queue_info, receive_n
from _net import wait_for
from kombu import Connection as KombuConnection
from kombu import Exchange as KombuExchange

from evcore import Receiver
from evcore.errors import ChannelError
from evcore.transport import FANOUT, TOPIC, Exchange, OutgoingMessage, QueueOptions
from evcore_amqp import AMQPTransport, parse_url

pytestmark = pytest.mark.amqp

#: Real Celery 5.7 messages kept in the repository (tests/data/wire-samples/README.md).
WIRE_SAMPLES = Path(__file__).resolve().parents[1] / "tests/data/wire-samples/amqp.jsonl"


@pytest.fixture
def exchange(amqp_url: str, exchange_name: str) -> Iterator[Exchange]:
    yield Exchange(exchange_name, TOPIC)
    delete_exchanges(amqp_url, {exchange_name})


@pytest.fixture(params=ADAPTER_PATHS)
def path(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Options selecting one of the adapter's paths."""
    options: dict[str, Any] = request.param
    return options


@pytest.fixture
def transport(amqp_url: str, path: dict[str, Any]) -> Iterator[AMQPTransport]:
    transport = AMQPTransport.from_url(amqp_url, **path)
    assert transport.fast_path == bool(path)
    yield transport
    transport.close()


def queue_name() -> str:
    return f"celeryev.{uuid.uuid4()}"


def event_body(**fields: Any) -> bytes:
    return json.dumps({"hostname": "w1@test", "clock": 1, **fields}).encode()


# -- what is declared -------------------------------------------------------------------------


def test_exchange_is_declared_as_celery_declares_it(
    amqp_url: str, transport: AMQPTransport, exchange: Exchange
) -> None:
    """kombu's declaration of Celery's event exchange (topic, durable, not auto-delete)
    agrees with evcore's, in both orders: no PRECONDITION_FAILED."""
    transport.publish(exchange, [OutgoingMessage("worker.online", event_body())])
    with KombuConnection(amqp_url) as conn:
        celery_exchange = KombuExchange(exchange.name, type="topic")  # Celery's event_exchange
        celery_exchange(conn.default_channel).declare()
        other = KombuExchange(f"{exchange.name}.k", type="topic")
        other(conn.default_channel).declare()
    try:
        transport.publish(Exchange(other.name, TOPIC), [OutgoingMessage("a", b"{}")])
        # a passive declare succeeds, and a durable=False declare is refused: it is durable
        connection = probe(amqp_url)
        channel = connection.channel()
        channel.exchange_declare(exchange.name, "topic", passive=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.exchange_declare(exchange.name, "topic", durable=False)
        assert refused.value.reply_code == 406
        connection.close()
    finally:
        delete_exchanges(amqp_url, {other.name})


def test_queue_is_declared_as_celery_declares_it(
    transport: AMQPTransport, exchange: Exchange
) -> None:
    """Exclusive, auto-delete, not durable, x-message-ttl 5000 and x-expires 60000 (ints)."""
    name = queue_name()
    subscription = transport.subscribe(exchange, "#", QueueOptions(name))
    info = queue_info(name)
    assert info is not None
    assert (info["exclusive"], info["auto_delete"], info["durable"]) == (True, True, False)
    assert info["arguments"] == {"x-message-ttl": 5000, "x-expires": 60000}
    assert info["argument_types"] == {"x-message-ttl": "signedint", "x-expires": "signedint"}
    subscription.close()
    assert wait_for(lambda: queue_info(name) is None, 10.0, 0.5), "exclusive queue outlived us"


def test_queue_max_length_drops_head(transport: AMQPTransport, exchange: Exchange) -> None:
    name = queue_name()
    options = QueueOptions(name, message_ttl=2.0, expires=30.0, max_length=100)
    subscription = transport.subscribe(exchange, "worker.#", options)
    info = queue_info(name)
    assert info is not None
    assert info["arguments"] == {
        "x-message-ttl": 2000,
        "x-expires": 30000,
        "x-max-length": 100,
        "x-overflow": "drop-head",
    }
    subscription.close()


# -- what is sent -----------------------------------------------------------------------------


def test_message_properties_and_body_as_celery_sends_them(
    amqp_url: str, transport: AMQPTransport, exchange: Exchange
) -> None:
    """A plain pika consumer sees Celery's properties and the raw body, no envelope."""
    connection = probe(amqp_url)
    channel = connection.channel()
    channel.exchange_declare(exchange.name, "topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange.name, "#")
    body = event_body(type="task-succeeded", uuid="abc", result="'ü'")
    batch = b"[" + body + b"," + body + b"]"
    transport.publish(
        exchange,
        [
            OutgoingMessage("task.succeeded", body, {"hostname": "w1@test"}),
            OutgoingMessage("task.multi", batch, {"hostname": "w1@test"}),
        ],
    )
    got: list[tuple[Any, Any, bytes]] = []
    assert wait_for(
        lambda: bool((frame := channel.basic_get(queue, auto_ack=True))[0] and got.append(frame))
        or len(got) == 2,
        10.0,
    )
    connection.close()
    (method1, props1, body1), (method2, _props2, body2) = got
    assert (method1.exchange, method1.routing_key, body1) == (
        exchange.name, "task.succeeded", body,
    )
    assert (method2.routing_key, body2) == ("task.multi", batch)
    assert props1.content_type == "application/json"
    assert props1.content_encoding == "utf-8"
    assert props1.delivery_mode == 1
    assert props1.priority == 0
    assert props1.headers == {"hostname": "w1@test"}
    for unset in ("correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                  "type", "user_id", "app_id", "cluster_id"):
        assert getattr(props1, unset) is None, unset


def test_binding_key_routes_on_the_broker(transport: AMQPTransport, exchange: Exchange) -> None:
    subscription = transport.subscribe(exchange, "worker.#", QueueOptions(queue_name()))
    transport.publish(
        exchange,
        [
            OutgoingMessage("task.multi", b"[]"),
            OutgoingMessage("worker.heartbeat", b"1"),
            OutgoingMessage("worker", b"2"),
        ],
    )
    got = receive_n(subscription, 2)
    assert [(m.routing_key, m.body) for m in got] == [("worker.heartbeat", b"1"), ("worker", b"2")]
    assert subscription.receive(0.3) == []


def test_receive_returns_everything_that_arrived(
    transport: AMQPTransport, exchange: Exchange
) -> None:
    subscription = transport.subscribe(exchange, "#", QueueOptions(queue_name()))
    messages = [OutgoingMessage("task.sent", str(i).encode()) for i in range(500)]
    transport.publish(exchange, messages)
    time.sleep(0.3)  # let them all arrive: one receive() then hands back many at once
    first = subscription.receive(1.0)
    rest = receive_n(subscription, 500 - len(first))
    assert len(first) > 1
    assert [m.body for m in first + rest] == [m.body for m in messages]
    assert subscription.received == 500


def test_wire_samples_decode_through_the_receiver(
    amqp_url: str, transport: AMQPTransport, exchange: Exchange
) -> None:
    """Celery's captured messages, published as-is with pika, come out of evcore's Receiver
    as the recorded ``decoded`` events, batches unrolled in order."""
    lines = [json.loads(line) for line in WIRE_SAMPLES.read_text().splitlines() if line]
    expected: list[dict[str, Any]] = []
    for line in lines:
        decoded = line["decoded"]
        expected.extend(decoded if isinstance(decoded, list) else [decoded])
    seen: list[dict[str, Any]] = []
    receiver = Receiver(transport, handlers={"*": seen.append}, exchange=exchange.name)
    connection = probe(amqp_url)
    channel = connection.channel()
    for line in lines:
        properties = {k: v for k, v in line["properties"].items() if v is not None}
        channel.basic_publish(
            exchange.name,
            line["routing_key"],
            line["body"].encode("utf-8"),
            pika.BasicProperties(**properties),
        )
    connection.close()
    handled = receiver.capture(limit=len(expected), timeout=20.0)
    receiver.close()

    assert handled == len(expected)
    assert receiver.stats.rejected == {} or sum(receiver.stats.rejected.values()) == 0
    for got, want in zip(seen, expected, strict=True):
        assert set(got) == set(want) | {"local_received"}
        for key, value in want.items():
            if key == "clock" and want["type"] == "task-sent":
                continue  # the receiver replaces a client's clock, as Celery does
            assert got[key] == value, (want["type"], key)


# -- refusals and limits ----------------------------------------------------------------------


def test_exchange_of_another_type_is_a_clear_channel_error(
    amqp_url: str, transport: AMQPTransport, exchange: Exchange
) -> None:
    """``evtest.x`` declared fanout elsewhere: subscribing and publishing as topic are both a
    ChannelError naming the exchange and both types, and the transport stays usable."""
    connection = probe(amqp_url)
    connection.channel().exchange_declare(exchange.name, "fanout", durable=True)
    connection.close()
    topic = Exchange(exchange.name, TOPIC)

    with pytest.raises(ChannelError) as subscribing:
        transport.subscribe(topic, "#", QueueOptions(queue_name()))
    with pytest.raises(ChannelError) as publishing:
        transport.publish(topic, [OutgoingMessage("task.sent", b"x")])

    for error in (subscribing.value, publishing.value):
        text = str(error)
        assert exchange.name in text and "'fanout'" in text and "'topic'" in text, text
    assert transport.stats.channel_errors == 1

    fanout = Exchange(exchange.name, FANOUT)
    subscription = transport.subscribe(fanout, "", QueueOptions(queue_name()))
    transport.publish(fanout, [OutgoingMessage("task.sent", b"after")])
    assert [m.body for m in receive_n(subscription, 1)] == [b"after"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"password": "not-the-password"}, "refused the login"),
        ({"vhost": "evcore-no-such-vhost"}, "refused access to the vhost"),
    ],
)
def test_refused_login_or_vhost_is_a_channel_error_when_publishing(
    amqp_url: str, exchange: Exchange, change: dict[str, str], reason: str
) -> None:
    options = parse_url(amqp_url)
    options = dataclasses.replace(options, **change)
    transport = AMQPTransport(options)
    try:
        for _ in range(2):  # refused again on the next attempt: nothing is cached
            with pytest.raises(ChannelError, match=reason):
                transport.publish(exchange, [OutgoingMessage("task.sent", b"{}")])
        assert transport.stats.published == 0
    finally:
        transport.close()


def test_oversized_messages_are_refused_counted_and_not_fatal(
    amqp_url: str, exchange: Exchange, path: dict[str, Any]
) -> None:
    transport = AMQPTransport.from_url(amqp_url, max_message_bytes=1024, **path)
    try:
        subscription = transport.subscribe(exchange, "#", QueueOptions(queue_name()))
        with pytest.raises(ChannelError, match="max_message_bytes=1024") as refused:
            transport.publish(
                exchange,
                [
                    OutgoingMessage("task.sent", b"small-1"),
                    OutgoingMessage("task.sent", b"x" * 1025),
                    OutgoingMessage("task.sent", b"small-2"),
                ],
            )
        assert "1 of 3" in str(refused.value)
        assert transport.stats.oversized == 1
        transport.publish(exchange, [OutgoingMessage("task.sent", b"x" * 1024)])
        got = receive_n(subscription, 3)
        assert [m.body for m in got] == [b"small-1", b"small-2", b"x" * 1024]
    finally:
        transport.close()


def test_unroutable_messages_are_dropped_quietly(
    transport: AMQPTransport, exchange: Exchange
) -> None:
    transport.publish(exchange, [OutgoingMessage("nobody.listens", b"1")] * 3)
    assert transport.stats.published == 3


def test_confirmed_publish_waits_once_per_batch(
    amqp_url: str, exchange: Exchange, path: dict[str, Any]
) -> None:
    transport = AMQPTransport.from_url(amqp_url + "?confirm_publish=true", **path)
    try:
        subscription = transport.subscribe(exchange, "#", QueueOptions(queue_name()))
        messages = [OutgoingMessage("task.sent", str(i).encode()) for i in range(200)]
        started = time.monotonic()
        transport.publish(exchange, messages[:150])
        transport.publish(exchange, messages[150:])
        # The acks end each wait, not confirm_timeout (30 s).
        assert time.monotonic() - started < 20
        assert (transport.stats.published, transport.stats.batches) == (200, 2)
        assert transport.stats.nacked == 0
        assert [m.body for m in receive_n(subscription, 200)] == [m.body for m in messages]
    finally:
        transport.close()


# -- closing --------------------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["subscription", "transport"])
def test_close_from_another_thread_unblocks_receive(
    transport: AMQPTransport, exchange: Exchange, closer: str
) -> None:
    subscription = transport.subscribe(exchange, "#", QueueOptions(queue_name()))
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(subscription.receive(None)))
    thread.start()
    time.sleep(0.3)
    (subscription if closer == "subscription" else transport).close()
    thread.join(15)
    assert not thread.is_alive(), "receive() stayed blocked after close()"
    assert outcome == [[]]
    assert subscription.receive(None) == []
