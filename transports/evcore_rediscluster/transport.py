"""The Redis Cluster transport: sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7) over
redis-py's RedisCluster.

An exchange is one sharded channel, ``evcore.<exchange>``, kept by the shard owning its
hash slot; messages are kombu's JSON envelope (routing key and headers inside), and the
subscription applies the binding key itself. Publishing a batch is a cluster pipeline of
SPUBLISH commands (all to one slot: one node, one round trip); redis-py follows MOVED and
ASK there. Subscriptions are connections of their own (see
:mod:`evcore_rediscluster.subscription`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from evcore.errors import ChannelError, ConnectionLost, UnsupportedOperation
from evcore.transport import (
    DIRECT,
    FANOUT,
    TOPIC,
    Capabilities,
    Exchange,
    OutgoingMessage,
    QueueOptions,
)
from evcore_adapter_helpers.envelope import pack_many
from evcore_adapter_helpers.subscriptions import OpenSubscriptions
from evcore_redis.client import load_redis, translate
from evcore_rediscluster.client import load_cluster_client
from evcore_rediscluster.settings import ClusterSettings, parse_cluster_settings
from evcore_rediscluster.subscription import ClusterSubscription

__all__ = ["ClusterTransport"]

_CAPABILITIES = Capabilities(
    broadcast=True,
    exact_routing=True,
    exchange_types=frozenset({TOPIC, FANOUT, DIRECT}),
    queue_options=frozenset(),
    persistent=False,
)


class ClusterTransport:
    """Events over a Redis Cluster's sharded pub/sub."""

    driver_type = "redis-cluster"
    capabilities = _CAPABILITIES

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        redis = load_redis()
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._cluster: Any = None
        #: Every node seen, tried when the cluster map is built again after a failure.
        self._known: dict[tuple[str, int], None] = dict.fromkeys(settings.startup_nodes)
        self._subscriptions: OpenSubscriptions[ClusterSubscription] = OpenSubscriptions()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str = "redis+cluster://", **options: Any) -> ClusterTransport:
        """Open ``redis+cluster://host:port`` (or ``rediss+cluster://``); nothing is
        connected until the first publish or subscribe."""
        load_cluster_client()
        return cls(parse_cluster_settings(url, **options))

    def _client(self) -> Any:
        """redis-py's cluster client, built (discovering the slots) when first needed or
        after a failure, from every node seen so far."""
        if self._cluster is None:
            redis = load_redis()
            cluster_client = load_cluster_client()
            from redis.backoff import NoBackoff  # noqa: PLC0415
            from redis.retry import Retry  # noqa: PLC0415

            node = self.settings.node
            try:
                self._cluster = cluster_client.RedisCluster(
                    startup_nodes=[
                        cluster_client.ClusterNode(host, port) for host, port in self._known
                    ],
                    username=node.username,
                    password=node.password,
                    socket_timeout=node.socket_timeout,
                    socket_connect_timeout=node.socket_connect_timeout,
                    socket_keepalive=node.socket_keepalive,
                    client_name=node.client_name,
                    ssl=node.kind == "tls",
                    protocol=2,
                    retry=Retry(NoBackoff(), 1),
                    **node.ssl,
                )
            except redis.exceptions.RedisClusterException as exc:
                raise ConnectionLost(
                    f"cannot discover the Redis Cluster from {self.settings.address}: {exc}"
                ) from exc
            except (redis.RedisError, OSError) as exc:
                raise translate(exc, "discovering the cluster", self._where()) from exc
            for found in self._cluster.get_nodes():
                self._known[(found.host, int(found.port))] = None
        return self._cluster

    def _where(self) -> Any:
        """Settings naming the first startup node, for error messages."""
        host, port = self.settings.startup_nodes[0]
        return replace(self.settings.node, host=host, port=port)

    def _forget_cluster(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            with contextlib.suppress(*self._errors):
                cluster.close()

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        """SPUBLISH every message, in order, in one pipeline to the channel's shard."""
        if self._closed:
            raise ConnectionLost("the Redis Cluster transport is closed")
        _require_known_type(exchange)
        if not messages:
            return
        channel = self.settings.channel(exchange.name)
        payloads = pack_many(exchange.name, messages)
        redis = load_redis()
        with self._lock:
            cluster = self._client()
            try:
                pipeline = cluster.pipeline()
                for payload in payloads:
                    pipeline.spublish(channel, payload)
                pipeline.execute()
            except redis.ResponseError as exc:
                if isinstance(exc, redis.exceptions.ClusterError) or "CLUSTERDOWN" in str(exc):
                    self._forget_cluster()
                    raise ConnectionLost(f"Redis Cluster refused SPUBLISH for now: {exc}") from exc
                raise ChannelError(f"Redis Cluster refused SPUBLISH on {channel!r}: {exc}") from exc
            except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
                self._forget_cluster()
                raise translate(exc, "publishing", self._where()) from exc

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> ClusterSubscription:
        """SSUBSCRIBE to the exchange's channel on the node serving its slot, on a
        connection of its own. ``queue`` is not used: pub/sub has no queue."""
        if self._closed:
            raise ConnectionLost("the Redis Cluster transport is closed")
        _require_known_type(exchange)
        redis = load_redis()
        channel = self.settings.channel(exchange.name)
        with self._lock:
            try:
                owner = self._client().get_node_from_key(channel)
            except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
                self._forget_cluster()
                raise translate(exc, "finding the channel's node", self._where()) from exc
        try:
            subscription = ClusterSubscription(
                self.settings,
                (owner.host, int(owner.port)),
                exchange.name,
                exchange.type,
                binding_key,
                self._subscriptions.forget,
            )
        except ConnectionLost:
            with self._lock:
                self._forget_cluster()  # the map may be stale: build it again next time
            raise
        if not self._subscriptions.add(subscription):
            subscription.close()
            raise ConnectionLost("the Redis Cluster transport was closed while subscribing")
        return subscription

    def close(self) -> None:
        """Close every subscription and the cluster client; safe to call twice."""
        self._closed = True
        for subscription in self._subscriptions.close():
            subscription.close()
        with self._lock:
            self._forget_cluster()

    def __repr__(self) -> str:
        return f"<ClusterTransport {self.settings.address}>"


def _require_known_type(exchange: Exchange) -> None:
    if exchange.type not in _CAPABILITIES.exchange_types:
        raise UnsupportedOperation(
            f"the Redis Cluster transport routes topic, fanout and direct exchanges; exchange "
            f"{exchange.name!r} has type {exchange.type!r}"
        )
