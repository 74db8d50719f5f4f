"""Connection loss on a real RabbitMQ: broker-side closes of the test's own connections
(``rabbitmqctl close_connection`` by client-provided name) and a TCP proxy of the test's own."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from _amqp_support import (
    ADAPTER_PATHS,
    close_connections,
    delete_exchanges,
    rabbitmqctl,
    receive_n,
    tcp_proxy,
)
from _net import wait_for

from evcore import Dispatcher, Receiver
from evcore.errors import ConnectionLost
from evcore.transport import TOPIC, Exchange, OutgoingMessage, QueueOptions
from evcore_amqp import AMQPTransport

pytestmark = pytest.mark.amqp


@pytest.fixture
def exchange(amqp_url: str, exchange_name: str) -> Iterator[Exchange]:
    yield Exchange(exchange_name, TOPIC)
    delete_exchanges(amqp_url, {exchange_name})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def transport_for(url: str) -> AMQPTransport:
    return AMQPTransport.from_url(url, connection_name=unique("evcore-test"))


def test_broker_closing_the_subscription_is_connection_lost_then_resubscribe(
    amqp_url: str, exchange: Exchange
) -> None:
    transport, publisher = transport_for(amqp_url), transport_for(amqp_url)
    try:
        queue = QueueOptions(unique("celeryev"))
        subscription = transport.subscribe(exchange, "#", queue)
        assert close_connections(subscription.connection_name) == 1

        with pytest.raises(ConnectionLost):
            for _ in range(50):  # bounded: the close arrives within a receive or two
                subscription.receive(0.2)
        assert subscription.lost
        subscription.close()

        again = transport.subscribe(exchange, "#", queue)
        publisher.publish(exchange, [OutgoingMessage("task.sent", b"after")])
        assert [m.body for m in receive_n(again, 1)] == [b"after"]
    finally:
        transport.close()
        publisher.close()


def test_broker_closing_the_publisher_raises_once_then_reconnects(
    amqp_url: str, exchange: Exchange
) -> None:
    transport, consumer = transport_for(amqp_url), transport_for(amqp_url)
    try:
        subscription = consumer.subscribe(exchange, "#", QueueOptions(unique("celeryev")))
        transport.publish(exchange, [OutgoingMessage("task.sent", b"before")])
        assert close_connections(transport.connection_name) == 1

        with pytest.raises(ConnectionLost):
            transport.publish(exchange, [OutgoingMessage("task.sent", b"lost")])
        transport.publish(exchange, [OutgoingMessage("task.sent", b"after")])

        assert transport.stats.connections == 2
        assert [m.body for m in receive_n(subscription, 2)] == [b"before", b"after"]
    finally:
        transport.close()
        consumer.close()


def test_receiver_reconnects_rebinds_and_keeps_receiving(
    amqp_url: str, exchange: Exchange
) -> None:
    """The evcore Receiver, whose connection the broker closes, subscribes again (declaring
    and binding anew) and receives what is published afterwards."""
    seen: list[dict[str, Any]] = []
    transport = transport_for(amqp_url)
    receiver = Receiver(transport, handlers={"*": seen.append}, exchange=exchange.name,
                        reconnect_delay=(0.05, 0.5))
    dispatcher = Dispatcher(transport_for(amqp_url), hostname="w1@loss", exchange=exchange.name)
    capturing = threading.Thread(target=lambda: receiver.capture(limit=2, timeout=30.0))
    try:
        capturing.start()
        dispatcher.send("worker-online", freq=2.0)
        assert wait_for(lambda: len(seen) == 1, 10.0)
        subscription = receiver._subscription
        assert subscription is not None
        assert close_connections(subscription.connection_name) == 1  # type: ignore[attr-defined]
        assert wait_for(lambda: receiver.stats.reconnects >= 1, 15.0), "no reconnect"

        dispatcher.send("worker-heartbeat", freq=2.0)
        capturing.join(20)
        assert [e["type"] for e in seen] == ["worker-online", "worker-heartbeat"]
    finally:
        receiver.close()
        capturing.join(10)
        dispatcher.close()
        dispatcher.transport.close()
        transport.close()


def test_dispatcher_buffers_while_offline_and_flushes_on_reconnect(
    amqp_url: str, exchange: Exchange
) -> None:
    consumer = transport_for(amqp_url)
    subscription = consumer.subscribe(exchange, "#", QueueOptions(unique("celeryev")))
    with tcp_proxy(amqp_url) as proxy:
        transport = transport_for(proxy.url(amqp_url))
        dispatcher = Dispatcher(transport, hostname="w1@offline", exchange=exchange.name)
        try:
            dispatcher.send("worker-online", freq=2.0)
            received = receive_n(subscription, 1)  # through the proxy before it is cut
            proxy.cut()
            for index in range(3):
                dispatcher.send("custom-offline", n=index)
            assert dispatcher.pending_events == 3
            assert dispatcher.stats.publish_failures >= 1

            proxy.restore()
            dispatcher.send("custom-back", n=3)
            assert dispatcher.pending_events == 0
            received += receive_n(subscription, 4)
            routing_keys = [m.routing_key for m in received]
            assert routing_keys == ["worker.online"] + ["custom.offline"] * 3 + ["custom.back"]
            assert transport.stats.connections == 2
        finally:
            dispatcher.close()
            transport.close()
            consumer.close()


def test_receive_through_a_cut_raises_and_reconnect_waits_for_the_broker(
    amqp_url: str, exchange: Exchange
) -> None:
    publisher = transport_for(amqp_url)
    with tcp_proxy(amqp_url) as proxy:
        transport = transport_for(proxy.url(amqp_url) + "?socket_timeout=2")
        queue = QueueOptions(unique("celeryev"))
        try:
            subscription = transport.subscribe(exchange, "#", queue)
            proxy.cut()
            with pytest.raises(ConnectionLost):
                for _ in range(50):
                    subscription.receive(0.2)
            subscription.close()
            with pytest.raises(ConnectionLost):
                transport.subscribe(exchange, "#", queue)  # the broker is still away

            proxy.restore()
            again = transport.subscribe(exchange, "#", queue)
            publisher.publish(exchange, [OutgoingMessage("task.sent", b"back")])
            assert [m.body for m in receive_n(again, 1)] == [b"back"]
        finally:
            transport.close()
            publisher.close()


def test_queue_still_held_by_our_lost_connection_is_retried_not_refused(
    amqp_url: str, exchange: Exchange
) -> None:
    """The client notices the loss before the broker does: the broker still holds the
    exclusive queue, so re-subscribing is ConnectionLost (retry), not a ChannelError, and
    works once the broker lets the old connection go."""
    publisher = transport_for(amqp_url)
    with tcp_proxy(amqp_url) as proxy:
        transport = transport_for(proxy.url(amqp_url))
        queue = QueueOptions(unique("celeryev"))
        try:
            subscription = transport.subscribe(exchange, "#", queue)
            proxy.drop_clients()
            with pytest.raises(ConnectionLost):
                for _ in range(50):
                    subscription.receive(0.2)
            subscription.close()

            with pytest.raises(ConnectionLost, match="still held"):
                transport.subscribe(exchange, "#", queue)

            proxy.release()
            subscribed: list[Any] = []

            def resubscribe() -> bool:
                try:
                    subscribed.append(transport.subscribe(exchange, "#", queue))
                except ConnectionLost:
                    return False
                return True

            assert wait_for(resubscribe, 15.0, 0.2), "the queue was never released"
            publisher.publish(exchange, [OutgoingMessage("task.sent", b"back")])
            assert [m.body for m in receive_n(subscribed[0], 1)] == [b"back"]
        finally:
            transport.close()
            publisher.close()


@pytest.mark.parametrize("path", ADAPTER_PATHS)
def test_heartbeats_are_answered_while_receive_waits(
    amqp_url: str, exchange: Exchange, path: dict[str, Any]
) -> None:
    """With a 1 s heartbeat the broker drops a silent client after about 2 s; a receive()
    that waits 4 s keeps the connection alive."""
    transport = AMQPTransport.from_url(amqp_url, heartbeat=1, **path)
    try:
        subscription = transport.subscribe(exchange, "#", QueueOptions(unique("celeryev")))
        assert subscription.receive(4.0) == []
        transport.publish(exchange, [OutgoingMessage("task.sent", b"alive")])
        assert [m.body for m in receive_n(subscription, 1)] == [b"alive"]
    finally:
        transport.close()


def test_queue_deleted_by_an_operator_is_connection_lost_then_redeclared(
    amqp_url: str, exchange: Exchange
) -> None:
    """The broker cancels the consumer of a deleted queue: receive() raises ConnectionLost
    (instead of waiting forever on nothing) and subscribing again declares it anew."""
    transport = transport_for(amqp_url)
    try:
        queue = QueueOptions(unique("celeryev"))
        subscription = transport.subscribe(exchange, "#", queue)
        rabbitmqctl("delete_queue", queue.name)
        with pytest.raises(ConnectionLost, match="cancelled"):
            for _ in range(50):
                subscription.receive(0.2)
        subscription.close()

        again = transport.subscribe(exchange, "#", queue)
        transport.publish(exchange, [OutgoingMessage("task.sent", b"redeclared")])
        assert [m.body for m in receive_n(again, 1)] == [b"redeclared"]
    finally:
        transport.close()
