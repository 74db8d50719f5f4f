"""The PostgreSQL LISTEN/NOTIFY transport.

Publishing is one statement per ``publish()`` call, ``SELECT pg_notify(channel, payload)``
over an array of payloads, with parameters: one round trip, one transaction, so the
messages are delivered together and in order, after the commit. Subscribing is ``LISTEN``
on a connection of each subscription's own (see :mod:`evcore_pgnotify.subscription`).
Routing is exact: the subscription applies the binding key to each message's routing key.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
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
from evcore_adapter_helpers.subscriptions import OpenSubscriptions
from evcore_pgnotify.client import connect, load_psycopg, translate, validate
from evcore_pgnotify.payload import MAX_BODY_SIZE, MAX_PAYLOAD, channel_for, encode
from evcore_pgnotify.settings import NotifySettings, parse_settings
from evcore_pgnotify.subscription import NotifySubscription

__all__ = ["NotifyTransport"]

_CAPABILITIES = Capabilities(
    broadcast=True,
    exact_routing=True,
    exchange_types=frozenset({TOPIC, FANOUT, DIRECT}),
    queue_options=frozenset(),
    persistent=False,
    max_body_size=MAX_BODY_SIZE,
)

_PUBLISH = "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload"


class NotifyTransport:
    """Events over PostgreSQL's LISTEN/NOTIFY (psycopg 3)."""

    driver_type = "pgnotify"
    capabilities = _CAPABILITIES

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self._psycopg = load_psycopg()
        self._connection: Any = None
        self._utf8_server = False
        self._nonces = itertools.count()
        self._subscriptions: OpenSubscriptions[NotifySubscription] = OpenSubscriptions()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str = "postgresql+notify://", **options: Any) -> NotifyTransport:
        """Open ``postgresql+notify://`` (a libpq URL otherwise); nothing is connected until
        the first publish or subscribe."""
        load_psycopg()
        settings = parse_settings(url, **options)
        validate(settings)
        return cls(settings)

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        """NOTIFY every message in one transaction; a call holding a message too large for
        a notification is refused whole (ChannelError) before anything is sent."""
        if self._closed:
            raise ConnectionLost("the PostgreSQL transport is closed")
        _require_known_type(exchange)
        if not messages:
            return
        with self._lock:
            connection = self._connection
            if connection is None:
                connection = self._connection = connect(self.settings)
                status = connection.info.parameter_status("server_encoding")
                self._utf8_server = status in (b"UTF8", "UTF8")
            payloads = [encode(m, next(self._nonces), self._utf8_server) for m in messages]
            for message, payload in zip(messages, payloads, strict=True):
                size = len(payload.encode("utf-8"))
                if size > MAX_PAYLOAD:
                    raise ChannelError(
                        f"a message of {len(message.body)} bytes (routing key "
                        f"{message.routing_key!r}) is {size} bytes as a notification; "
                        f"PostgreSQL carries at most {MAX_PAYLOAD}: none of the "
                        f"{len(messages)} message(s) of this call was sent"
                    )
            try:
                connection.execute(_PUBLISH, (channel_for(exchange.name), payloads))
            except self._psycopg.Error as exc:
                if connection.closed or isinstance(exc, self._psycopg.OperationalError):
                    self._connection = None
                    connection.close()
                raise translate(exc, "publishing", self.settings) from exc

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> NotifySubscription:
        """LISTEN on the exchange's channel on a connection of its own; returns once the
        server listens. ``queue`` is not used: notifications have no queue."""
        if self._closed:
            raise ConnectionLost("the PostgreSQL transport is closed")
        _require_known_type(exchange)
        subscription = NotifySubscription(
            self.settings,
            exchange.name,
            exchange.type,
            binding_key,
            channel_for(exchange.name),
            self._subscriptions.forget,
        )
        if not self._subscriptions.add(subscription):
            subscription.close()
            raise ConnectionLost("the PostgreSQL transport was closed while subscribing")
        return subscription

    def close(self) -> None:
        """Close every subscription and the publishing connection; safe to call twice."""
        self._closed = True
        for subscription in self._subscriptions.close():
            subscription.close()
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def __repr__(self) -> str:
        return f"<NotifyTransport {self.settings.address}>"


def _require_known_type(exchange: Exchange) -> None:
    if exchange.type not in _CAPABILITIES.exchange_types:
        raise UnsupportedOperation(
            f"the PostgreSQL transport routes topic, fanout and direct exchanges; exchange "
            f"{exchange.name!r} has type {exchange.type!r}"
        )
