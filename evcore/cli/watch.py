"""A transport wrapper that records whether the broker is currently reachable.

The Receiver reconnects by itself and says nothing about it; the commands wrap the transport
they hand it, so they can tell the user whether events are flowing or the broker is away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import cast

from evcore.errors import ConnectionLost
from evcore.transport import (
    Capabilities,
    DurableTransport,
    Exchange,
    IncomingMessage,
    OutgoingMessage,
    QueueOptions,
    StreamOptions,
    StreamSubscription,
    Subscription,
    Transport,
)


class Link:
    """The connection state seen through a :class:`WatchedTransport`."""

    def __init__(self, on_change: Callable[[Link], None] | None = None) -> None:
        self._lock = threading.Lock()
        #: Called (from the receiving thread) whenever ``connected`` flips.
        self.on_change = on_change
        #: True once a subscription succeeded and until a connection error.
        self.connected = False
        #: The last connection error, or None while connected.
        self.error: str | None = None
        #: ``time.monotonic()`` of the last change between connected and not.
        self.since = time.monotonic()
        #: Times the connection was lost after having been up.
        self.losses = 0

    def up(self) -> None:
        """Record a successful subscription."""
        with self._lock:
            changed = not self.connected
            if changed:
                self.since = time.monotonic()
            self.connected = True
            self.error = None
        if changed and self.on_change is not None:
            self.on_change(self)

    def down(self, exc: ConnectionLost) -> None:
        """Record a connection error."""
        with self._lock:
            changed = self.connected
            if changed:
                self.since = time.monotonic()
                self.losses += 1
            self.connected = False
            self.error = str(exc) or type(exc).__name__
        if changed and self.on_change is not None:
            self.on_change(self)


class WatchedSubscription:
    """A subscription that reports connection errors to a :class:`Link`."""

    def __init__(self, inner: Subscription, link: Link) -> None:
        self._inner = inner
        self._link = link

    def receive(self, timeout: float | None = None) -> Sequence[IncomingMessage]:
        try:
            return self._inner.receive(timeout)
        except ConnectionLost as exc:
            self._link.down(exc)
            raise

    def close(self) -> None:
        self._inner.close()


class WatchedStreamSubscription(WatchedSubscription):
    """A durable transport's stream subscription that reports connection errors."""

    def __init__(self, inner: StreamSubscription, link: Link) -> None:
        super().__init__(inner, link)
        self._stream = inner

    def ack(self, messages: Iterable[IncomingMessage]) -> None:
        try:
            self._stream.ack(messages)
        except ConnectionLost as exc:
            self._link.down(exc)
            raise

    def assignment(self) -> frozenset[int]:
        return self._stream.assignment()

    @property
    def trimmed(self) -> int:
        return self._stream.trimmed


class WatchedTransport:
    """Delegate to a transport, recording subscription successes and failures."""

    def __init__(self, inner: Transport, link: Link | None = None) -> None:
        self.inner = inner
        self.link = link if link is not None else Link()
        self.driver_type: str = inner.driver_type
        self.capabilities: Capabilities = inner.capabilities

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        self.inner.publish(exchange, messages)

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> WatchedSubscription:
        try:
            subscription = self.inner.subscribe(exchange, binding_key, queue)
        except ConnectionLost as exc:
            self.link.down(exc)
            raise
        self.link.up()
        return WatchedSubscription(subscription, self.link)

    def subscribe_stream(
        self, exchange: Exchange, binding_key: str, options: StreamOptions
    ) -> WatchedStreamSubscription:
        durable = cast(DurableTransport, self.inner)
        try:
            subscription = durable.subscribe_stream(exchange, binding_key, options)
        except ConnectionLost as exc:
            self.link.down(exc)
            raise
        self.link.up()
        return WatchedStreamSubscription(subscription, self.link)

    def close(self) -> None:
        self.inner.close()
