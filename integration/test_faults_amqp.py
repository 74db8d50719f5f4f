"""Faults on RabbitMQ, reconciled: connections cut and stalled by a TCP proxy of the
test's own, and a slow handler behind a queue bounded by ``x-max-length`` and a TTL.

The shared broker is only talked to; its connections are never closed but through the
proxy, which carries only this test's own connections.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from _amqp_support import delete_exchanges
from _faults_support import Monitor, StallingProxy, Stream, reconcile
from _net import wait_for

from evcore import Dispatcher
from evcore_amqp import parse_url

pytestmark = pytest.mark.amqp

HOST = "w1@faults"


@pytest.fixture
def exchange(amqp_url: str, exchange_name: str) -> Iterator[str]:
    yield exchange_name
    delete_exchanges(amqp_url, {exchange_name})


@pytest.fixture
def proxy(amqp_url: str) -> Iterator[StallingProxy]:
    proxy = StallingProxy(parse_url(amqp_url).endpoints[0].port)
    yield proxy
    proxy.close()


def through(proxy: StallingProxy, amqp_url: str, **query: object) -> str:
    options = parse_url(amqp_url)
    params = "&".join(f"{key}={value}" for key, value in query.items())
    url = f"amqp://{options.username}:{options.password}@127.0.0.1:{proxy.port}//"
    return f"{url}?{params}" if params else url


def test_connections_cut_mid_stream_buffer_at_the_bound_and_drain_in_order(
    amqp_url: str, exchange: str, proxy: StallingProxy
) -> None:
    url = through(proxy, amqp_url)
    monitor = Monitor(url, exchange)
    dispatcher = Dispatcher(url, hostname=HOST, exchange=exchange, offline_buffer_limit=30)
    stream = Stream(dispatcher)
    try:
        stream.send(50)
        assert monitor.saw(49)

        proxy.cut()  # both connections go; new ones are refused
        stream.send(80)  # never raises: the newest 30 are kept
        assert len(dispatcher.offline_buffer) <= 30
        assert stream.largest_buffer <= 30
        assert dispatcher.offline_buffer.dropped_events >= 50

        proxy.restore()
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1, 30), (
            "the receiver did not resubscribe by itself"
        )
        dispatcher.flush()
        assert dispatcher.pending_events == 0
        stream.send(20)
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
    assert monitor.errors == []
    row = reconcile("amqp: proxy cut, buffer bound 30", stream, monitor)
    # The newest 30 of the outage arrive after the reconnect, in order.
    assert monitor.numbers[-50:] == list(range(100, 150))
    assert row.dropped + row.lost == 50


def test_a_stalled_connection_is_given_up_and_its_events_counted_as_lost(
    amqp_url: str, exchange: str, proxy: StallingProxy
) -> None:
    # Heartbeats every second: both ends give a silent peer up within a few seconds.
    monitor = Monitor(through(proxy, amqp_url, heartbeat=1), exchange)
    dispatcher = Dispatcher(amqp_url, hostname=HOST, exchange=exchange)
    stream = Stream(dispatcher)
    try:
        stream.send(20)
        assert monitor.saw(19)

        proxy.stall()  # the receiver's connection: bytes in, nothing out
        stalled_at = time.monotonic()
        stream.send(30)  # routed to the stalled queue, which goes with its connection
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1, 60), (
            "the receiver did not give up the stalled connection"
        )
        resumed_after = time.monotonic() - stalled_at
        stream.send(10)
        assert monitor.saw(stream.accepted[-1], 30)
    finally:
        dispatcher.close()
        monitor.stop()
    row = reconcile(f"amqp: stalled, resumed after {resumed_after:.1f}s", stream, monitor)
    assert (row.published, row.lost, row.dropped) == (60, 30, 0)


def test_a_slow_handler_behind_a_bounded_queue_counts_what_the_broker_dropped(
    amqp_url: str, exchange: str
) -> None:
    blasting = True

    def slow() -> float:
        return 0.05 if blasting else 0.0

    monitor = Monitor(amqp_url, exchange, slow=slow, queue_max_length=50, queue_ttl=1.0)
    dispatcher = Dispatcher(amqp_url, hostname=HOST, exchange=exchange)
    stream = Stream(dispatcher)
    try:
        stream.send(1)
        assert monitor.saw(0)
        stream.send(2000, pad=4096)  # 8 MiB: far more than the sockets hold
        time.sleep(1.5)  # long enough for the TTL to expire what still waits
        blasting = False
        stream.send(1)
        assert monitor.saw(stream.accepted[-1], 60)
    finally:
        blasting = False
        dispatcher.close()
        monitor.stop()
    row = reconcile("amqp: slow handler, max-length 50, ttl 1s", stream, monitor)
    assert row.lost > 0 and row.dropped == 0
