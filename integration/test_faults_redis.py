"""Faults on Redis, reconciled: a numbered stream from a Dispatcher to a Receiver feeding a
State, through a broker restart, a subscriber that is away, and a subscriber too slow for
the server's pub/sub output-buffer limit.

Every server here is a redis-server of the test's own on a free port; the shared service
is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _faults_support import Monitor, StallingProxy, Stream, reconcile
from _net import wait_for
from _redis_support import TEST_DB, PrivateRedis, admin, client_name, clients_named

from evcore import Dispatcher

pytestmark = pytest.mark.redis

HOST = "w1@faults"


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


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
