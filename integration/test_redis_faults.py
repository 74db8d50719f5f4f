"""Faults: killed connections and a broker that really goes away and comes back.

Kills target only this test's own connections (found by client name); outages use a
redis-server of the test's own on a free port.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _net import wait_for
from _redis_support import (
    PrivateRedis,
    admin,
    client_name,
    clients_named,
    kill_clients,
    private_redis,
    with_db,
)

from evcore import Dispatcher, Receiver
from evcore.errors import ConnectionLost
from evcore.transport import FANOUT, Exchange, OutgoingMessage, QueueOptions
from evcore_redis import RedisTransport

pytestmark = pytest.mark.redis


class Capture:
    """A Receiver consuming in a thread of its own, collecting event types."""

    def __init__(self, url: str, exchange: str) -> None:
        self.receiver = Receiver(url, exchange=exchange, reconnect_delay=(0.05, 0.5))
        self.types: list[str] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self.receiver.itercapture(timeout=60):
                self.types.append(event["type"])
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def saw(self, *types: str, timeout: float = 15.0) -> bool:
        return wait_for(lambda: all(t in self.types for t in types), timeout)

    def stop(self) -> None:
        self.receiver.close()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the receiver did not stop"


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


@pytest.fixture
def url(redis_url: str) -> str:
    return with_db(redis_url)


def test_receiver_resubscribes_after_its_connection_is_killed(url: str, exchange_name: str) -> None:
    name = client_name()
    capture = Capture(f"{url}?client_name={name}", exchange_name)
    probe = admin(url)
    try:
        with Dispatcher(url, hostname="w1@faults", exchange=exchange_name) as dispatcher:
            dispatcher.send("worker-online")
            assert capture.saw("worker-online")
            assert kill_clients(probe, name) == 1
            assert wait_for(lambda: capture.receiver.stats.reconnects >= 1, 15)
            dispatcher.send("worker-heartbeat")
            assert capture.saw("worker-heartbeat")
    finally:
        capture.stop()
        probe.close()
    assert capture.errors == []
    assert capture.types == ["worker-online", "worker-heartbeat"]


def test_dispatcher_buffers_when_its_connection_is_killed_and_flushes_after(
    url: str, exchange_name: str
) -> None:
    name = client_name()
    capture = Capture(url, exchange_name)
    probe = admin(url)
    dispatcher = Dispatcher(
        f"{url}?client_name={name}", hostname="w1@faults", exchange=exchange_name
    )
    try:
        dispatcher.send("worker-online")
        assert capture.saw("worker-online")
        assert kill_clients(probe, name) == 1
        dispatcher.send("worker-heartbeat")  # fails on the dead socket and is buffered
        assert dispatcher.stats.publish_failures == 1
        assert dispatcher.pending_events == 1
        dispatcher.send("worker-offline")  # reconnects, sends the buffered event first
        assert dispatcher.pending_events == 0
        assert capture.saw("worker-heartbeat", "worker-offline")
        assert len(clients_named(probe, name)) == 1
    finally:
        dispatcher.close()
        capture.stop()
        probe.close()
    assert capture.types == ["worker-online", "worker-heartbeat", "worker-offline"]


def test_transport_raises_connection_lost_while_the_broker_is_down_and_recovers(
    server: PrivateRedis, exchange_name: str
) -> None:
    transport = RedisTransport.from_url(server.url, socket_connect_timeout=2)
    exchange = Exchange(exchange_name, FANOUT)
    queue = QueueOptions("q")
    subscription = transport.subscribe(exchange, "#", queue)
    received: list[Any] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            received.extend(subscription.receive(None))
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    server.stop()
    reader.join(15)
    assert not reader.is_alive(), "a blocked receive() did not notice the broker going away"
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
    transport.close()
    assert [m.routing_key for m in got] == ["back.again"]


def test_receiver_and_dispatcher_ride_out_a_broker_restart(
    server: PrivateRedis, exchange_name: str
) -> None:
    capture = Capture(server.url, exchange_name)
    dispatcher = Dispatcher(server.url, hostname="w1@faults", exchange=exchange_name)
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
            "the receiver did not resubscribe after the broker came back"
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
