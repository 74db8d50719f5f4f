"""``AMQPTransport``: evcore's Transport over RabbitMQ (AMQP 0-9-1): publishing on a
connection of its own (pamqp's codec), consuming with pika."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from evcore.errors import ConnectionLost, UnsupportedOperation
from evcore.transport import (
    DIRECT,
    FANOUT,
    TOPIC,
    Capabilities,
    Exchange,
    OutgoingMessage,
    QueueOptions,
)
from evcore_adapter_helpers.subscriptions import OpenSubscriptions
from evcore_amqp.connection import describe, load_pika
from evcore_amqp.fastpath import fast_path_enabled
from evcore_amqp.options import AMQPOptions, parse_url
from evcore_amqp.publisher import Publisher, PublishStats
from evcore_amqp.subscription import AMQPSubscription

__all__ = ["AMQPTransport"]

_CAPABILITIES = Capabilities(
    broadcast=True,
    exact_routing=True,
    exchange_types=frozenset({TOPIC, FANOUT, DIRECT}),
    queue_options=frozenset(
        {"exclusive", "auto_delete", "durable", "message_ttl", "expires", "max_length"}
    ),
    persistent=True,
)


class AMQPTransport:
    """RabbitMQ, wire-compatible with Celery's py-amqp transport.

    Publishing uses one connection, opened on the first publish; every subscription gets
    a connection of its own, so a Dispatcher and any number of Receivers can share one
    transport from different threads.

    >>> transport = AMQPTransport.from_url("amqp://guest:guest@127.0.0.1:5672//")
    >>> transport.options.vhost, transport.driver_type
    ('/', 'amqp')
    """

    driver_type = "amqp"
    capabilities = _CAPABILITIES

    def __init__(self, options: AMQPOptions) -> None:
        load_pika()
        self.options = options
        #: Whether subscriptions take the fast path: ``fast_path=true`` was given and the
        #: installed pika is one it was tested against (see ``evcore_amqp.fastpath``).
        self.fast_path = fast_path_enabled(options.fast_path)
        self._publisher = Publisher(options)
        self._subscriptions: OpenSubscriptions[AMQPSubscription] = OpenSubscriptions()
        #: Queues whose subscription lost its connection: the broker may still hold them.
        self._stale_queues: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AMQPTransport:
        """Build a transport for an ``amqp://``, ``amqps://`` or ``pyamqp://`` URL.

        Options come from the URL's query string or keyword arguments (which win); see
        ``docs/transports/amqp.md``. Nothing connects until the first publish or subscribe.
        """
        return cls(parse_url(url, options))

    @property
    def stats(self) -> PublishStats:
        """Counters of the publishing side (published, oversized, nacked, ...)."""
        return self._publisher.stats

    @property
    def connection_name(self) -> str:
        """The client-provided name of the publishing connection, as RabbitMQ shows it."""
        return self._publisher.connection_name

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages`` in order to ``exchange`` (declared once per channel).

        Raises ConnectionLost when they may not have been sent; the next call reconnects.
        Raises ChannelError when the broker refuses (an exchange of another type), when
        messages exceed ``max_message_bytes`` (the others are still sent) or, with
        ``confirm_publish``, when the broker nacks some.
        """
        self._check_exchange(exchange)
        self._publisher.publish(exchange, messages)

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> AMQPSubscription:
        """Declare ``exchange`` and ``queue``, bind them with ``binding_key`` and consume,
        on a new connection."""
        self._check_exchange(exchange)
        with self._lock:
            if self._closed:
                raise ConnectionLost("the AMQP transport is closed")
            stale = queue.name in self._stale_queues
        subscription = AMQPSubscription(
            self.options,
            exchange,
            binding_key,
            queue,
            self._forget,
            stale_queue=stale,
            fast_path=self.fast_path,
        )
        with self._lock:
            self._stale_queues.discard(queue.name)
        if not self._subscriptions.add(subscription):
            subscription.close()
            raise ConnectionLost("the AMQP transport was closed while subscribing")
        return subscription

    def close(self) -> None:
        """Close the publishing connection and every subscription; safe to call twice."""
        with self._lock:
            self._closed = True
        for subscription in self._subscriptions.close():
            subscription.close()
        self._publisher.close()

    def _forget(self, subscription: AMQPSubscription) -> None:
        self._subscriptions.forget(subscription)
        if subscription.lost:
            with self._lock:
                self._stale_queues.add(subscription.queue.name)

    def _check_exchange(self, exchange: Exchange) -> None:
        if exchange.type not in _CAPABILITIES.exchange_types:
            raise UnsupportedOperation(
                f"exchange type {exchange.type!r} is not supported by the AMQP transport "
                f"(supported: {sorted(_CAPABILITIES.exchange_types)})"
            )

    def __repr__(self) -> str:
        return f"<AMQPTransport {describe(self.options)}>"
