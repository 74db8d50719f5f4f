"""Faults on SNS/SQS (moto's server), reconciled like the other fault tests: a receiver or
a dispatcher cut off behind a TCP proxy of the test's own, and a receiver whose queue is
deleted under it."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from _faults_support import Monitor, Stream, reconcile
from _net import TcpProxy, wait_for
from _sqs_support import own_prefix, sqs_url

from evcore import Dispatcher
from evcore_sqs import SqsTransport

pytestmark = pytest.mark.sqs

HOST = "w1@sqsfaults"


def proxied(moto_endpoint: str) -> tuple[TcpProxy, str]:
    proxy = TcpProxy(urlsplit(moto_endpoint).port or 80)
    return proxy, f"http://127.0.0.1:{proxy.port}"


def test_receiver_cut_off_finds_its_queue_again_and_loses_nothing(
    moto_endpoint: str, exchange_name: str
) -> None:
    proxy, endpoint = proxied(moto_endpoint)
    monitor = Monitor(sqs_url(endpoint, connect_timeout="1"), exchange_name)
    dispatcher = Dispatcher(sqs_url(moto_endpoint), hostname=HOST, exchange=exchange_name)
    stream = Stream(dispatcher)
    try:
        assert wait_for(lambda: monitor.receiver._subscription is not None, 10)
        stream.send(20)
        assert monitor.saw(19)
        proxy.cut()
        stream.send(30)  # kept by the receiver's queue while it cannot read
        proxy.restore()
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1, 20)
        stream.send(10)
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
        proxy.close()
    assert monitor.errors == []
    row = reconcile("sqs: receiver cut off, 30 sent meanwhile", stream, monitor)
    assert (row.received, row.lost, row.buffered, row.dropped) == (60, 0, 0, 0)


def test_dispatcher_cut_off_buffers_and_flushes_in_order(
    moto_endpoint: str, exchange_name: str
) -> None:
    proxy, endpoint = proxied(moto_endpoint)
    monitor = Monitor(sqs_url(moto_endpoint), exchange_name)
    dispatcher = Dispatcher(
        sqs_url(endpoint, connect_timeout="1"), hostname=HOST, exchange=exchange_name
    )
    stream = Stream(dispatcher)
    try:
        assert wait_for(lambda: monitor.receiver._subscription is not None, 10)
        stream.send(10)
        assert monitor.saw(9)
        proxy.cut()
        stream.send(5)  # each fails and is buffered
        assert dispatcher.pending_events == 5
        assert dispatcher.stats.publish_failures >= 1
        proxy.restore()
        stream.send(5)  # sends the buffered events first
        assert dispatcher.pending_events == 0
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
        proxy.close()
    row = reconcile("sqs: dispatcher cut off", stream, monitor)
    assert (row.received, row.lost, row.buffered, row.dropped) == (20, 0, 0, 0)


def test_queue_deleted_under_a_receiver_makes_it_resubscribe_and_counts_the_loss(
    moto_endpoint: str, exchange_name: str
) -> None:
    prefix = own_prefix()
    url = sqs_url(moto_endpoint, queue_prefix=prefix)
    monitor = Monitor(url, exchange_name)
    dispatcher = Dispatcher(url, hostname=HOST, exchange=exchange_name)
    admin = SqsTransport.from_url(url)
    _, sqs = admin._connected()
    stream = Stream(dispatcher)
    try:
        assert wait_for(lambda: monitor.receiver._subscription is not None, 10)
        stream.send(10)
        assert monitor.saw(9)
        (queue,) = sqs.list_queues(QueueNamePrefix=prefix)["QueueUrls"]
        sqs.delete_queue(QueueUrl=queue)  # as a careless sweep would
        stream.send(15)  # published to a topic whose only queue is gone
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1, 20)
        stream.send(10)
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
        admin.close()
    row = reconcile("sqs: queue deleted under the receiver", stream, monitor)
    assert row.received + row.lost == 35 and row.dropped == 0
    assert row.lost <= 15
