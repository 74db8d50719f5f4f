"""Faults on PostgreSQL LISTEN/NOTIFY, reconciled like the other fault tests: this test's own
backends terminated with pg_terminate_backend (found by application_name, never another's),
and the server cut off behind a TCP proxy of the test's own."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from _faults_support import Monitor, Stream, reconcile
from _net import TcpProxy, wait_for
from _pgnotify_support import app_name, backends_named, notify_url, terminate

from evcore import Dispatcher
from evcore.errors import ConnectionLost
from evcore.transport import TOPIC, Exchange, OutgoingMessage, QueueOptions
from evcore_pgnotify import NotifyTransport

pytestmark = pytest.mark.postgres

HOST = "w1@pgfaults"


def proxy_for(postgres_url: str, name: str | None = None) -> tuple[TcpProxy, str]:
    """A TCP proxy of the test's own in front of the server, and the URL through it."""
    parts = urlsplit(postgres_url)
    proxy = TcpProxy(parts.port or 5432, parts.hostname or "127.0.0.1")
    netloc = f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{proxy.port}".lstrip("@")
    return proxy, notify_url(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), name)


def test_receiver_terminated_resubscribes_and_counts_what_it_missed(
    postgres_url: str, exchange_name: str
) -> None:
    name = app_name()
    monitor = Monitor(notify_url(postgres_url, name), exchange_name)
    dispatcher = Dispatcher(notify_url(postgres_url), hostname=HOST, exchange=exchange_name)
    stream = Stream(dispatcher)
    try:
        assert wait_for(lambda: backends_named(postgres_url, name, listening=True) == 1, 10)
        stream.send(20)
        assert monitor.saw(19)
        assert terminate(postgres_url, name) == 1
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1, 15), (
            "the receiver did not resubscribe after its backend was terminated"
        )
        assert wait_for(lambda: backends_named(postgres_url, name, listening=True) == 1, 10)
        stream.send(20)
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
    assert monitor.errors == []
    row = reconcile("pgnotify: listener terminated", stream, monitor)
    assert (row.received, row.lost, row.buffered, row.dropped) == (40, 0, 0, 0)


def test_dispatcher_terminated_buffers_and_flushes_in_order(
    postgres_url: str, exchange_name: str
) -> None:
    name = app_name()
    monitor = Monitor(notify_url(postgres_url), exchange_name)
    dispatcher = Dispatcher(notify_url(postgres_url, name), hostname=HOST, exchange=exchange_name)
    stream = Stream(dispatcher)
    try:
        stream.send(10)
        assert monitor.saw(9)
        assert terminate(postgres_url, name) == 1
        stream.send(1)  # fails on the terminated backend and is buffered
        assert dispatcher.stats.publish_failures == 1
        assert dispatcher.pending_events == 1
        stream.send(9)  # reconnects, sends the buffered event first
        assert dispatcher.pending_events == 0
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
    row = reconcile("pgnotify: publisher terminated", stream, monitor)
    assert (row.received, row.lost, row.buffered, row.dropped) == (20, 0, 0, 0)


def test_server_cut_off_raises_connection_lost_and_recovers(
    postgres_url: str, exchange_name: str
) -> None:
    proxy, proxied = proxy_for(postgres_url)
    transport = NotifyTransport.from_url(proxied, connect_timeout=2)
    exchange = Exchange(exchange_name, TOPIC)
    queue = QueueOptions("q")
    try:
        subscription = transport.subscribe(exchange, "#", queue)
        transport.publish(exchange, [OutgoingMessage("before", b"{}")])
        assert [m.routing_key for m in subscription.receive(5)] == ["before"]
        errors: list[BaseException] = []

        def read() -> None:
            try:
                subscription.receive(None)
            except BaseException as exc:
                errors.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        proxy.cut()
        reader.join(15)
        assert not reader.is_alive(), "a blocked receive() did not notice the cut"
        assert len(errors) == 1 and isinstance(errors[0], ConnectionLost)
        with pytest.raises(ConnectionLost):
            subscription.receive(0)
        for _ in range(2):
            with pytest.raises(ConnectionLost):
                transport.publish(exchange, [OutgoingMessage("lost", b"{}")])
            with pytest.raises(ConnectionLost):
                transport.subscribe(exchange, "#", queue)

        proxy.restore()
        again = transport.subscribe(exchange, "#", queue)
        transport.publish(exchange, [OutgoingMessage("back.again", b"{}")])
        got: list[Any] = []
        assert wait_for(lambda: bool(got.extend(again.receive(0.2))) or bool(got), 10)
        assert [m.routing_key for m in got] == ["back.again"]
    finally:
        transport.close()
        proxy.close()


def test_events_published_while_the_listener_is_cut_off_are_counted_as_lost(
    postgres_url: str, exchange_name: str
) -> None:
    name = app_name()
    proxy, proxied = proxy_for(postgres_url, name)
    monitor = Monitor(proxied, exchange_name)
    dispatcher = Dispatcher(notify_url(postgres_url), hostname=HOST, exchange=exchange_name)
    stream = Stream(dispatcher)
    try:
        stream.send(20)
        assert monitor.saw(19)
        proxy.cut()  # the listener's connection goes, and it cannot come back yet
        assert wait_for(lambda: backends_named(postgres_url, name) == 0, 10)
        stream.send(30)  # notified to nobody: NOTIFY keeps nothing for an absent listener
        proxy.restore()
        assert wait_for(lambda: backends_named(postgres_url, name, listening=True) == 1, 15), (
            "the receiver did not resubscribe by itself"
        )
        stream.send(10)
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
        proxy.close()
    row = reconcile("pgnotify: listener cut off, 30 sent meanwhile", stream, monitor)
    assert (row.published, row.lost, row.dropped) == (60, 30, 0)
    assert monitor.state.lost_events == {HOST: 30}
