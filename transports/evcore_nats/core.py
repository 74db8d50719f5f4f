"""NATS core pub/sub (``nats://``): at-most-once fan-out with NATS doing the topic matching.

Publishing sends every message of a batch on its subject (see :mod:`evcore_nats.subjects`)
and then one PING: the server's PONG confirms it has the whole batch, so ``publish()``
returns only once the batch was handed over (``ConnectionLost`` otherwise). A message the
server would refuse (over its ``max_payload``, headers included, or an impossible subject)
is not sent at all: it is counted and reported as a :class:`~evcore.errors.ChannelError`
after the rest of the batch was published, since the server answers such a message by
closing the connection.

A subscription is one NATS subscription per subject of its binding on the transport's
connection; nats-py hands messages to a callback on the private loop, which queues them for
``receive()`` up to ``max_buffered`` messages / ``max_buffered_bytes`` (beyond them they are
dropped and counted; evcore's sequence headers then count the lost events too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from evcore.errors import ChannelError, ConnectionLost, TransportError, UnsupportedOperation
from evcore.transport import (
    DIRECT,
    FANOUT,
    TOPIC,
    Capabilities,
    Exchange,
    IncomingMessage,
    OutgoingMessage,
    QueueOptions,
)
from evcore_adapter_helpers.subscriptions import OpenSubscriptions
from evcore_nats.client import Link, load_nats
from evcore_nats.settings import NatsSettings, parse_settings
from evcore_nats.subjects import (
    MAX_SUBJECT_BYTES,
    publish_subject,
    routing_key_of,
    subscribe_subjects,
)
from evcore_nats.wire import header_bytes, incoming, nats_headers

__all__ = ["NatsStats", "NatsSubscription", "NatsTransport", "Publisher", "refusal"]

logger = logging.getLogger("evcore.nats")

_CAPABILITIES = Capabilities(
    broadcast=True,
    exact_routing=False,
    exchange_types=frozenset({TOPIC, FANOUT, DIRECT}),
    queue_options=frozenset(),
    persistent=False,
)

#: The most messages one ``receive()`` call hands back.
MAX_DRAIN = 10_000
#: How many (exchange, routing key) pairs keep their subject ready.
_SUBJECT_CACHE_SIZE = 1024


@dataclass
class NatsStats:
    """Counters of a NATS transport's publishing side."""

    #: Messages handed to the server (confirmed by its PONG).
    published: int = 0
    #: Messages not sent because, headers included, they exceed the server's max_payload.
    oversized: int = 0
    #: Messages not sent because their subject or properties cannot be carried.
    unsendable: int = 0


class Publisher:
    """Sends batches on a link and confirms them with one round trip; shared with JetStream
    for its subject cache and its refusal rules."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.stats = NatsStats()
        self._subjects: dict[tuple[str, str], str] = {}

    def subject(self, exchange: str, routing_key: str) -> str:
        key = (exchange, routing_key)
        subject = self._subjects.get(key)
        if subject is None:
            subject = publish_subject(self.link.settings.subject_prefix, exchange, routing_key)
            if len(self._subjects) >= _SUBJECT_CACHE_SIZE:
                self._subjects.clear()
            self._subjects[key] = subject
        return subject

    def prepare(
        self,
        messages: Sequence[OutgoingMessage],
        subjects: Sequence[str],
        max_payload: int,
    ) -> tuple[list[tuple[str, bytes, dict[str, str]]], list[str]]:
        """The (subject, payload, headers) to send for ``messages`` on ``subjects``, and why
        each refused one was refused (counted in :attr:`stats`)."""
        ready: list[tuple[str, bytes, dict[str, str]]] = []
        refused: list[str] = []
        stats = self.stats
        for message, subject in zip(messages, subjects, strict=True):
            if len(subject) > MAX_SUBJECT_BYTES:
                stats.unsendable += 1
                refused.append(f"routing key {message.routing_key[:60]!r}... is too long")
                continue
            try:
                headers = nats_headers(message)
            except ValueError as exc:
                stats.unsendable += 1
                refused.append(str(exc))
                continue
            size = len(message.body) + header_bytes(headers)
            if size > max_payload:
                stats.oversized += 1
                refused.append(f"{size} bytes exceed the server's max_payload of {max_payload}")
                continue
            ready.append((subject, message.body, headers))
        return ready, refused


async def _send(client: Any, ready: list[tuple[str, bytes, dict[str, str]]], wait: float) -> None:
    publish = client.publish
    for subject, body, headers in ready:
        await publish(subject, body, headers=headers)
    await client.flush(wait)


def refusal(exchange: str, refused: list[str], total: int) -> ChannelError:
    """The error naming what a publish refused (the first reasons, and how many)."""
    reasons = "; ".join(dict.fromkeys(refused[:3]))
    return ChannelError(
        f"{len(refused)} of {total} message(s) to exchange {exchange!r} were not published "
        f"({reasons}); the others were"
    )


class NatsSubscription:
    """Messages on the subjects of one binding, queued for :meth:`receive`."""

    def __init__(
        self,
        link: Link,
        exchange: Exchange,
        binding_key: str,
        on_close: Callable[[NatsSubscription], None],
    ) -> None:
        settings = link.settings
        self.exchange = exchange.name
        self.subjects, self.exact = subscribe_subjects(
            settings.subject_prefix, exchange.name, exchange.type, binding_key
        )
        #: Messages dropped because the reader fell behind by more than the buffer bounds.
        self.dropped = 0
        self._link = link
        self._on_close = on_close
        self._prefix = settings.subject_prefix
        self._max_messages = settings.max_buffered
        self._max_bytes = settings.max_buffered_bytes
        self._cond = threading.Condition()
        self._items: deque[tuple[str, bytes, Any]] = deque()
        self._bytes = 0
        self._closed = False
        self._lost: str | None = None
        self._routing_keys: dict[str, str] = {}
        self._subs: list[Any] = []
        self._session = session = link.session()
        link.run(
            lambda: self._attach(session.client),
            f"subscribing to {self.subjects}",
            settings.flush_timeout,
            session,
        )
        refused = session.take_refusals()
        if refused:
            self._close(unsubscribe=True)
            raise ChannelError(f"NATS refused the subscription to {self.subjects}: {refused[0]}")
        session.watch(self, self._on_lost)

    async def _attach(self, client: Any) -> None:
        for subject in self.subjects:
            self._subs.append(
                await client.subscribe(
                    subject,
                    cb=self._on_message,
                    pending_msgs_limit=self._max_messages,
                    pending_bytes_limit=self._max_bytes,
                )
            )
        await client.flush(self._link.settings.flush_timeout)

    async def _on_message(self, msg: Any) -> None:
        data = msg.data
        with self._cond:
            if self._closed:
                return
            if len(self._items) >= self._max_messages or self._bytes >= self._max_bytes:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    logger.warning(
                        "NATS subscription to %s fell behind: %d message(s) dropped",
                        self.subjects,
                        self.dropped,
                    )
                return
            self._items.append((msg.subject, data, msg.headers))
            self._bytes += len(data)
            self._cond.notify()

    def _on_lost(self, reason: str) -> None:
        with self._cond:
            self._lost = reason
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def receive(self, timeout: float | None = None) -> list[IncomingMessage]:
        """Wait up to ``timeout`` seconds for a message, then return it with every message
        queued behind it (at most 10 000); ``[]`` on timeout or close. What arrived before
        a lost connection is handed back first; then ConnectionLost."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._cond:
            items = self._items
            while not items and not self._closed and self._lost is None:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return []
                self._cond.wait(wait)
            if self._closed:
                return []
            if not items:
                raise ConnectionLost(f"{self._lost}; subscribe again")
            if len(items) <= MAX_DRAIN:
                batch = list(items)
                items.clear()
                self._bytes = 0
            else:
                batch = [items.popleft() for _ in range(MAX_DRAIN)]
                self._bytes -= sum(len(data) for _, data, _ in batch)
        return [self._decode(subject, data, headers) for subject, data, headers in batch]

    def _decode(self, subject: str, data: bytes, headers: Any) -> IncomingMessage:
        routing_key = self._routing_keys.get(subject)
        if routing_key is None:
            routing_key = routing_key_of(subject, self._prefix, self.exchange)
            if len(self._routing_keys) >= _SUBJECT_CACHE_SIZE:
                self._routing_keys.clear()
            self._routing_keys[subject] = routing_key
        message = incoming(data, routing_key, self.exchange, headers)
        if message.rejected is not None:
            logger.warning("dropped a message on NATS subject %r: %s", subject, message.rejected)
        return message

    def close(self) -> None:
        """Unsubscribe; wakes a blocked :meth:`receive`, which returns ``[]``."""
        self._close(unsubscribe=True)

    def _close(self, unsubscribe: bool) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()
        session = self._session
        session.unwatch(self)
        if unsubscribe and session.lost is None and self._subs:
            try:
                self._link.run(
                    lambda: _unsubscribe(self._subs),
                    f"unsubscribing from {self.subjects}",
                    self._link.settings.flush_timeout,
                    session,
                )
            except TransportError as exc:
                logger.debug("unsubscribing from %s failed: %s", self.subjects, exc)
        self._on_close(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "lost" if self._lost else "open"
        return f"<NatsSubscription {self._link.settings.address} {self.subjects} {state}>"


async def _unsubscribe(subscriptions: list[Any]) -> None:
    for subscription in subscriptions:
        await subscription.unsubscribe()


class NatsTransport:
    """Events over NATS core pub/sub, subjects ``[prefix.]<exchange>.<routing key words>``."""

    driver_type = "nats"
    capabilities = _CAPABILITIES

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self._link = Link(settings, "core")
        self._publisher = Publisher(self._link)
        self._subscriptions: OpenSubscriptions[NatsSubscription] = OpenSubscriptions()
        self._closed = False

    @classmethod
    def from_url(cls, url: str = "nats://", **options: Any) -> NatsTransport:
        """Open ``nats://[user:password@]host[:port][?options]``; options as in the docs.

        Nothing is connected until the first publish or subscribe.
        """
        load_nats()
        return cls(parse_settings(url, **options))

    @property
    def stats(self) -> NatsStats:
        """Counters of the publishing side (published, oversized, unsendable)."""
        return self._publisher.stats

    @property
    def connections(self) -> int:
        """Connections opened so far (a reconnect opens a new one)."""
        return self._link.connections

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        """Publish every message on its subject and confirm the batch with one round trip.

        Raises ConnectionLost if any may be unsent, ChannelError (after sending the rest)
        for messages the server would refuse.
        """
        if self._closed:
            raise ConnectionLost("the NATS transport is closed")
        _require_type(exchange)
        if not messages:
            return
        session = self._link.session()
        client = session.client
        publisher = self._publisher
        subjects = [publisher.subject(exchange.name, m.routing_key) for m in messages]
        ready, refused = publisher.prepare(messages, subjects, client.max_payload)
        if ready:
            wait = self.settings.flush_timeout
            self._link.run(
                lambda: _send(client, ready, wait),
                f"publishing to exchange {exchange.name!r}",
                wait,
                session,
            )
            denied = session.take_refusals()
            if denied:
                raise ChannelError(
                    f"NATS refused publishing to exchange {exchange.name!r}: {denied[0]}"
                )
            self._publisher.stats.published += len(ready)
        if refused:
            raise refusal(exchange.name, refused, len(messages))

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> NatsSubscription:
        """Subscribe to the subjects of ``binding_key`` and return once the server has the
        subscription. ``queue`` is not used: core NATS keeps nothing for anyone."""
        if self._closed:
            raise ConnectionLost("the NATS transport is closed")
        _require_type(exchange)
        subscription = NatsSubscription(
            self._link, exchange, binding_key, self._subscriptions.forget
        )
        if not self._subscriptions.add(subscription):
            subscription.close()
            raise ConnectionLost("the NATS transport was closed while subscribing")
        return subscription

    def close(self) -> None:
        """Close every subscription, the connection and the loop thread; safe twice."""
        self._closed = True
        for subscription in self._subscriptions.close():
            subscription._close(unsubscribe=False)
        self._link.close()

    def __repr__(self) -> str:
        return f"<NatsTransport {self.settings.address}>"


def _require_type(exchange: Exchange) -> None:
    if exchange.type not in _CAPABILITIES.exchange_types:
        raise UnsupportedOperation(
            f"the NATS transport maps topic, fanout and direct exchanges onto subjects; "
            f"exchange {exchange.name!r} has type {exchange.type!r}"
        )

