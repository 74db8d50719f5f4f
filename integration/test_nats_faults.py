"""Faults: a private nats-server that really goes away and comes back.

Each test starts its own nats-server on a free port (never the shared one) and kills it in
teardown.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _faults_support import Capture
from _nats_support import PrivateNats, private_nats
from _net import wait_for

from evcore import Dispatcher
from evcore.errors import ConnectionLost
from evcore.transport import TOPIC, Exchange, OutgoingMessage, QueueOptions
from evcore_nats import NatsTransport

pytestmark = pytest.mark.nats


@pytest.fixture
def server() -> Iterator[PrivateNats]:
    with private_nats() as server:
        yield server


def test_transport_raises_connection_lost_while_the_server_is_down_and_recovers(
    server: PrivateNats, exchange_name: str
) -> None:
    transport = NatsTransport.from_url(server.url, connect_timeout=1)
    exchange = Exchange(exchange_name, TOPIC)
    queue = QueueOptions("q")
    subscription = transport.subscribe(exchange, "#", queue)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            subscription.receive(None)
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    server.stop(kill=True)
    reader.join(15)
    assert not reader.is_alive(), "a blocked receive() did not notice the server going away"
    assert len(errors) == 1 and isinstance(errors[0], ConnectionLost)
    for _ in range(2):
        with pytest.raises(ConnectionLost):
            transport.publish(exchange, [OutgoingMessage("a", b"{}")])
        with pytest.raises(ConnectionLost):
            transport.subscribe(exchange, "#", queue)

    server.start()
    again = transport.subscribe(exchange, "#", queue)
    transport.publish(exchange, [OutgoingMessage("back.again", b"{}")])
    got: list[Any] = []
    assert wait_for(lambda: bool(got.extend(again.receive(0.2))) or bool(got), 10)
    assert transport.connections == 2
    transport.close()
    assert [m.routing_key for m in got] == ["back.again"]


def test_receiver_and_dispatcher_ride_out_a_server_restart(
    server: PrivateNats, exchange_name: str
) -> None:
    url = f"{server.url}?connect_timeout=1"
    capture = Capture(url, exchange_name)
    dispatcher = Dispatcher(url, hostname="w1@faults", exchange=exchange_name)
    try:
        dispatcher.send("worker-online")
        assert capture.saw("worker-online")

        server.stop()
        for _ in range(3):
            dispatcher.send("worker-heartbeat")  # buffered, never raised
        assert dispatcher.pending_events == 3
        assert dispatcher.stats.publish_failures >= 1

        server.start()
        assert wait_for(lambda: capture.receiver.stats.reconnects >= 1, 20), (
            "the receiver did not resubscribe after the server came back"
        )
        dispatcher.flush()
        assert dispatcher.pending_events == 0
        dispatcher.send("worker-offline")
        assert capture.saw("worker-offline")
    finally:
        dispatcher.close()
        capture.stop()
    assert capture.errors == []
    assert capture.types == ["worker-online"] + ["worker-heartbeat"] * 3 + ["worker-offline"]
    assert capture.receiver.stats.lost_events.total() == 0


def test_a_silent_server_is_given_up_after_unanswered_pings(
    server: PrivateNats, exchange_name: str
) -> None:
    from _net import TcpProxy

    proxy = TcpProxy(server.port)
    transport = NatsTransport.from_url(
        f"nats://127.0.0.1:{proxy.port}?ping_interval=0.3&max_outstanding_pings=2"
    )
    try:
        subscription = transport.subscribe(Exchange(exchange_name, TOPIC), "#", QueueOptions("q"))
        proxy.stall()  # both ends see a silent peer; nothing is closed
        with pytest.raises(ConnectionLost):
            for _ in range(50):  # about 1 s of PINGs without PONG is enough
                subscription.receive(0.2)
    finally:
        transport.close()
        proxy.close()
