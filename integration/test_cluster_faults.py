"""Faults on a Redis Cluster of the test's own, reconciled like the other fault tests: the
channel's slot migrated to another node, its primary stopped and restarted, and its primary
stopped with a replica taking over."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.crc
from _faults_support import Monitor, Stream, reconcile
from _net import wait_for
from _rediscluster_support import ClusterNode, PrivateCluster

from evcore import Dispatcher

pytestmark = pytest.mark.rediscluster

HOST = "w1@clusterfaults"


def slot_of(exchange: str) -> int:
    return int(redis.crc.key_slot(f"evcore.{exchange}".encode()))


def exchange_on(cluster: PrivateCluster, node: ClusterNode, base: str) -> str:
    """An exchange name whose channel's slot ``node`` serves."""
    for index in range(10_000):
        name = f"{base}-{index}"
        if cluster.primary_for(slot_of(name)) is node:
            return name
    raise AssertionError("no exchange name hashes to that node")


@pytest.fixture
def cluster(redis_cluster_binaries: None) -> Iterator[PrivateCluster]:
    cluster = PrivateCluster(replicas=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def test_subscription_follows_its_slot_to_another_node(
    cluster: PrivateCluster, exchange_name: str
) -> None:
    source, target = cluster.primaries[1], cluster.primaries[2]
    exchange = exchange_on(cluster, source, exchange_name)
    slot = slot_of(exchange)
    monitor = Monitor(cluster.url, exchange)
    dispatcher = Dispatcher(cluster.url, hostname=HOST, exchange=exchange)
    stream = Stream(dispatcher)
    try:
        stream.send(10)
        assert monitor.saw(9)
        target_id = target.node_id()
        # An empty slot moves by assignment alone: the new owner first, then the others.
        for node in [target, source, *[n for n in cluster.primaries if n not in (source, target)]]:
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        assert wait_for(lambda: cluster.primary_for(slot) is target, 10)
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1, 15), (
            "the subscription did not notice its slot moving"
        )
        stream.send(10)  # the publisher meets MOVED and follows it
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
    assert monitor.errors == []
    row = reconcile("redis-cluster: slot migrated", stream, monitor)
    assert (row.received, row.lost, row.buffered, row.dropped) == (20, 0, 0, 0)


def test_stopped_primary_without_replica_breaks_the_subscription_until_it_returns(
    cluster: PrivateCluster, exchange_name: str
) -> None:
    node = cluster.primaries[2]  # has no replica
    exchange = exchange_on(cluster, node, exchange_name)
    monitor = Monitor(f"{cluster.url}?socket_connect_timeout=1", exchange)
    dispatcher = Dispatcher(
        f"{cluster.url}?socket_connect_timeout=1", hostname=HOST, exchange=exchange
    )
    stream = Stream(dispatcher)
    try:
        stream.send(10)
        assert monitor.saw(9)
        node.stop()
        stream.send(15)  # the shard is gone: buffered by the dispatcher
        assert dispatcher.pending_events == 15
        assert dispatcher.stats.publish_failures >= 1
        node.start()
        assert wait_for(cluster.healthy, 20)
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1, 20), (
            "the receiver did not subscribe again when the node came back"
        )
        dispatcher.flush()
        assert dispatcher.pending_events == 0
        stream.send(5)
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
    assert monitor.errors == []
    row = reconcile("redis-cluster: primary stopped, restarted", stream, monitor)
    assert (row.received, row.lost, row.buffered, row.dropped) == (30, 0, 0, 0)


def test_failover_to_a_replica_moves_the_subscription_there(
    cluster: PrivateCluster, exchange_name: str
) -> None:
    primary, replica = cluster.primaries[0], cluster.replicas[0]
    exchange = exchange_on(cluster, primary, exchange_name)
    monitor = Monitor(f"{cluster.url}?socket_connect_timeout=1", exchange)
    dispatcher = Dispatcher(
        f"redis+cluster://127.0.0.1:{cluster.primaries[1].port}?socket_connect_timeout=1",
        hostname=HOST,
        exchange=exchange,
    )
    stream = Stream(dispatcher)
    try:
        stream.send(10)
        assert monitor.saw(9)
        primary.stop()
        assert wait_for(lambda: cluster.primary_for(slot_of(exchange)) is replica, 20), (
            "the replica was not promoted"
        )
        assert wait_for(cluster.healthy, 20)
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1, 20)
        stream.send(10)
        dispatcher.flush()
        assert monitor.saw(stream.accepted[-1])
    finally:
        dispatcher.close()
        monitor.stop()
    assert monitor.errors == []
    row = reconcile("redis-cluster: failover to the replica", stream, monitor)
    assert (row.received, row.lost, row.buffered, row.dropped) == (20, 0, 0, 0)
