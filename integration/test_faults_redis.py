"""Faults on Redis: killed connections, a broker that really goes away and comes back, a
subscriber that is away, and one too slow for the server's pub/sub output-buffer limit.

Two kinds of check: event types seen by a Receiver across the fault (:class:`Capture`), and a
numbered stream from a Dispatcher to a Receiver feeding a State, reconciled to the event
(``_faults_support``). Kills target only this test's own connections (found by client name);
outages and output limits use a redis-server of the test's own on a free port.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _faults_support import Capture, Monitor, StallingProxy, Stream, reconcile
from _net import wait_for
from _redis_support import (
    TEST_DB,
    PrivateRedis,
    admin,
    client_name,
    clients_named,
    kill_clients,
    private_redis,
    with_db,
)

from evcore import Dispatcher
from evcore.errors import ConnectionLost
from evcore.transport import FANOUT, Exchange, OutgoingMessage, QueueOptions
from evcore_redis import RedisTransport

pytestmark = pytest.mark.redis

HOST = "w1@faults"


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


# -- a numbered stream, reconciled to the event ----------------------------------------


def test_broker_restart_mid_stream_buffers_drops_at_the_bound_and_drains_in_order(
    server: PrivateRedis, exchange_name: str
) -> None:
    monitor = Monitor(server.url, exchange_name)
    dispatcher = Dispatcher(
        server.url, hostname=HOST, exchange=exchange_name, offline_buffer_limit=40
    )
    stream = Stream(dispatcher)
    try:
        stream.send(60)
        assert monitor.saw(59)

        server.stop()
        stream.send(100)  # never raises: 40 kept in order, the 60 oldest dropped
        assert len(dispatcher.offline_buffer) == 40
        assert dispatcher.offline_buffer.dropped_events == 60
        assert stream.largest_buffer == 40

        server.start()
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1), (
            "the receiver did not resubscribe by itself after the restart"
        )
        dispatcher.flush()  # drains the 40, oldest first
        assert dispatcher.pending_events == 0
        stream.send(40)
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
    assert monitor.errors == []
    assert monitor.numbers == list(range(60)) + list(range(120, 200))
    row = reconcile("redis: restart, buffer bound 40", stream, monitor)
    assert (row.dropped, row.lost, row.buffered) == (60, 0, 0)


def test_events_published_while_the_subscriber_is_away_are_counted_as_lost(
    server: PrivateRedis, exchange_name: str
) -> None:
    probe = admin(server.url)
    proxy = StallingProxy(server.port)
    monitor = Monitor(f"redis://127.0.0.1:{proxy.port}/{TEST_DB}", exchange_name)
    dispatcher = Dispatcher(server.url, hostname=HOST, exchange=exchange_name)
    stream = Stream(dispatcher)
    try:
        stream.send(20)
        assert monitor.saw(19)
        proxy.cut()  # the subscriber's connection goes, and it cannot come back yet
        assert wait_for(lambda: probe.execute_command("PUBSUB", "NUMPAT") == 0)
        stream.send(50)  # published to nobody: pub/sub keeps nothing
        assert probe.execute_command("PUBSUB", "NUMPAT") == 0
        proxy.restore()
        assert wait_for(lambda: probe.execute_command("PUBSUB", "NUMPAT") == 1), (
            "the receiver did not resubscribe by itself"
        )
        stream.send(10)
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
        proxy.close()
        probe.close()
    row = reconcile("redis: subscriber cut off, 50 sent meanwhile", stream, monitor)
    assert (row.published, row.lost, row.dropped) == (80, 50, 0)
    assert monitor.state.lost_events == {HOST: 50}


def test_a_slow_handler_past_the_pubsub_output_limit_is_disconnected_and_counts_the_loss(
    exchange_name: str,
) -> None:
    # Redis drops a pub/sub client whose unread output passes 256 KiB (or 64 KiB for 1 s).
    server = PrivateRedis("--client-output-buffer-limit", "pubsub 256kb 64kb 1")
    server.start()
    name = client_name()
    probe = admin(server.url)
    cut_off = False

    def slow() -> float:
        return 0.0 if cut_off else 0.02

    monitor = Monitor(f"{server.url}?client_name={name}&max_drain=16", exchange_name, slow=slow)
    dispatcher = Dispatcher(server.url, hostname=HOST, exchange=exchange_name)
    stream = Stream(dispatcher)
    try:
        stream.send(1)
        assert monitor.saw(0)
        for _ in range(40):  # 4 MiB per round; bounded by count
            stream.send(1000, pad=4096)
            if not clients_named(probe, name):
                break
        cut_off = not clients_named(probe, name)
        assert cut_off, "the server never disconnected the slow subscriber"
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1, 60)
        stream.send(1)
        assert monitor.saw(stream.accepted[-1], 60)
    finally:
        cut_off = True
        dispatcher.close()
        monitor.stop()
        probe.close()
        server.stop()
    row = reconcile("redis: slow handler, pubsub limit 256kb", stream, monitor)
    assert row.lost > 0 and row.dropped == 0
