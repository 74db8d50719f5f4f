"""Faults on NATS, reconciled like the other brokers' (``_faults_support.reconcile``): a
numbered stream from a Dispatcher to a Receiver feeding a State through a server restart,
a subscriber cut off, and, on JetStream, a server killed mid-stream. Every server here is a
nats-server of the test's own on a free port; the shared one is never touched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _faults_support import Monitor, StallingProxy, Stream, reconcile
from _nats_support import PrivateNats, private_nats
from _net import wait_for

from evcore import Dispatcher
from evcore.transport import EARLIEST, StreamOptions

pytestmark = pytest.mark.nats

HOST = "w1@faults"


@pytest.fixture
def server() -> Iterator[PrivateNats]:
    with private_nats() as server:
        yield server


def test_server_restart_mid_stream_buffers_drops_at_the_bound_and_drains_in_order(
    server: PrivateNats, exchange_name: str
) -> None:
    url = f"{server.url}?connect_timeout=1"
    monitor = Monitor(url, exchange_name)
    dispatcher = Dispatcher(url, hostname=HOST, exchange=exchange_name, offline_buffer_limit=40)
    stream = Stream(dispatcher)
    try:
        stream.send(60)
        assert monitor.saw(59)
        server.stop()
        stream.send(100)  # never raises: 40 kept in order, the 60 oldest dropped
        assert len(dispatcher.offline_buffer) == 40
        assert dispatcher.offline_buffer.dropped_events == 60
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
    row = reconcile("nats: restart, buffer bound 40", stream, monitor)
    assert (row.dropped, row.lost, row.buffered) == (60, 0, 0)


def test_events_published_while_the_subscriber_is_cut_off_are_counted_as_lost(
    server: PrivateNats, exchange_name: str
) -> None:
    proxy = StallingProxy(server.port)
    monitor = Monitor(f"nats://127.0.0.1:{proxy.port}?connect_timeout=1", exchange_name)
    dispatcher = Dispatcher(server.url, hostname=HOST, exchange=exchange_name)
    stream = Stream(dispatcher)
    try:
        stream.send(20)
        assert monitor.saw(19)
        proxy.cut()  # the subscriber's connection goes, and it cannot come back yet
        assert wait_for(lambda: server.connections() == 1)  # the dispatcher's alone
        stream.send(50)  # published to nobody: core NATS keeps nothing
        proxy.restore()
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1), (
            "the receiver did not resubscribe by itself"
        )
        stream.send(10)
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
        proxy.close()
    row = reconcile("nats: subscriber cut off, 50 sent meanwhile", stream, monitor)
    assert (row.published, row.lost, row.dropped) == (80, 50, 0)
    assert monitor.state.lost_events == {HOST: 50}


def test_jetstream_server_killed_mid_stream_loses_nothing_it_acknowledged(
    tmp_path: Path,
) -> None:
    with private_nats(store_dir=tmp_path / "store") as server:
        url = server.url.replace("nats://", "jetstream://") + "?partitions=1&connect_timeout=1"
        # A group member: after the restart it holds its partition still and continues
        # after the last event it applied (reconcile checks that none is handled twice).
        monitor = Monitor(url, "ev", stream=StreamOptions(group="g", start=EARLIEST, lease=5.0))
        dispatcher = Dispatcher(url, hostname=HOST, exchange="ev", offline_buffer_limit=40)
        stream = Stream(dispatcher)
        try:
            stream.send(60)
            assert monitor.saw(59)
            server.stop(kill=True)
            stream.send(100)  # 40 kept in order, the 60 oldest dropped
            server.start()
            assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1)
            dispatcher.flush()
            assert dispatcher.pending_events == 0
            stream.send(40)
            assert monitor.saw(stream.accepted[-1])
        finally:
            dispatcher.close()
            monitor.stop()
    assert monitor.errors == []
    # Everything appended before the kill was kept (file store); only the buffer bound,
    # on the dispatcher's side, dropped anything.
    assert monitor.numbers == list(range(60)) + list(range(120, 200))
    row = reconcile("jetstream group: kill -9, restart, buffer bound 40", stream, monitor)
    assert (row.dropped, row.lost, row.buffered) == (60, 0, 0)
