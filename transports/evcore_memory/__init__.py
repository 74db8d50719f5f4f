"""In-memory transport (``memory://``): evcore's embedded default, for unit tests and demos.

``memory://`` is one process-wide bus and ``memory://NAME`` a separate named bus. Exchanges
follow AMQP semantics (topic bindings with ``*`` and ``#``, fanout, direct); each
subscription owns a queue, and a message reaches only the queues bound before it was
published. ``receive()`` hands back whatever is queued at once, so tests are deterministic.

A bus can be taken offline (:meth:`MemoryBus.set_offline`) to test how code behaves when
the broker goes away, without a broker.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from evcore.errors import ChannelError, ConnectionLost, InvalidURL, UnsupportedOperation
from evcore.routing import binding_matches
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

__all__ = ["MemoryBus", "MemorySubscription", "MemoryTransport", "get_bus"]

_CAPABILITIES = Capabilities(
    broadcast=True,
    exact_routing=True,
    exchange_types=frozenset({TOPIC, FANOUT, DIRECT}),
    queue_options=frozenset({"exclusive", "message_ttl", "max_length"}),
    persistent=False,
)


@dataclass(eq=False)
class _Queue:
    options: QueueOptions
    items: deque[tuple[float, IncomingMessage]] = field(default_factory=deque)
    consumers: int = 0
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class _Binding:
    exchange: str
    key: str
    queue: _Queue


class MemoryBus:
    """A broker in this process: exchanges, bindings and queues behind one lock."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._exchange_types: dict[str, str] = {}
        self._bindings: list[_Binding] = []
        self._queues: dict[str, _Queue] = {}
        self._offline = False
        self._generation = 0

    def set_offline(self, offline: bool = True) -> None:
        """Simulate a broker outage: publishing and receiving raise ConnectionLost and
        every subscription is lost, as on a real broker; ``False`` brings the bus back."""
        with self._lock:
            self._offline = offline
            if offline:
                self._generation += 1
                self._bindings.clear()
                self._queues.clear()
            self._arrived.notify_all()

    def reset(self) -> None:
        """Forget every exchange, binding and queued message."""
        with self._lock:
            self._exchange_types.clear()
            self._bindings.clear()
            self._queues.clear()
            self._arrived.notify_all()

    def _check_online(self) -> None:
        if self._offline:
            name = self.name or "default"
            raise ConnectionLost(f"memory bus {name!r} is offline")

    def _declare(self, exchange: Exchange) -> None:
        if exchange.type not in _CAPABILITIES.exchange_types:
            raise UnsupportedOperation(f"exchange type {exchange.type!r} is not supported")
        known = self._exchange_types.setdefault(exchange.name, exchange.type)
        if known != exchange.type:
            raise ChannelError(
                f"exchange {exchange.name!r} is already declared with type {known!r}, "
                f"cannot redeclare it as {exchange.type!r}"
            )

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        now = time.monotonic()
        with self._lock:
            self._check_online()
            self._declare(exchange)
            bindings = [b for b in self._bindings if b.exchange == exchange.name]
            delivered = False
            for message in messages:
                incoming = IncomingMessage(
                    body=message.body,
                    routing_key=message.routing_key,
                    exchange=exchange.name,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    headers=dict(message.headers),
                )
                targets = {
                    id(b.queue): b.queue
                    for b in bindings
                    if _routes(exchange.type, b.key, message.routing_key)
                }
                for queue in targets.values():
                    _enqueue(queue, now, incoming)
                    delivered = True
            if delivered:
                self._arrived.notify_all()

    def subscribe(
        self, exchange: Exchange, binding_key: str, options: QueueOptions
    ) -> tuple[_Queue, int]:
        with self._lock:
            self._check_online()
            self._declare(exchange)
            queue = self._queues.get(options.name)
            if queue is None:
                queue = self._queues[options.name] = _Queue(options)
            elif options.exclusive or queue.options.exclusive:
                raise ChannelError(f"queue {options.name!r} is exclusive to another subscriber")
            queue.consumers += 1
            self._bindings.append(_Binding(exchange.name, binding_key, queue))
            return queue, self._generation

    def unsubscribe(self, queue: _Queue) -> None:
        with self._lock:
            queue.consumers -= 1
            if queue.consumers <= 0 and queue.options.auto_delete:
                self._bindings = [b for b in self._bindings if b.queue is not queue]
                if self._queues.get(queue.options.name) is queue:
                    del self._queues[queue.options.name]
            self._arrived.notify_all()

    def take(
        self, queue: _Queue, generation: int, timeout: float | None, closed: threading.Event
    ) -> list[IncomingMessage]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._offline or generation != self._generation:
                    raise ConnectionLost(f"memory bus {self.name or 'default'!r} went offline")
                if closed.is_set():
                    return []
                if queue.items:
                    return _drain(queue)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._arrived.wait(remaining)


def _routes(exchange_type: str, binding_key: str, routing_key: str) -> bool:
    if exchange_type == FANOUT:
        return True
    if exchange_type == DIRECT:
        return binding_key == routing_key
    return binding_matches(binding_key, routing_key)


def _enqueue(queue: _Queue, now: float, message: IncomingMessage) -> None:
    limit = queue.options.max_length
    if limit is not None and len(queue.items) >= limit:
        queue.items.popleft()  # drop-head, as RabbitMQ's overflow=drop-head
        queue.dropped += 1
    queue.items.append((now, message))


def _drain(queue: _Queue) -> list[IncomingMessage]:
    ttl = queue.options.message_ttl
    items = queue.items
    if ttl is None:
        out = [message for _, message in items]
    else:
        oldest = time.monotonic() - ttl
        out = [message for queued_at, message in items if queued_at >= oldest]
    items.clear()
    return out


_buses: dict[str, MemoryBus] = {}
_buses_lock = threading.Lock()


def get_bus(name: str = "") -> MemoryBus:
    """The process-wide bus called ``name`` (``""`` is the one ``memory://`` uses)."""
    with _buses_lock:
        bus = _buses.get(name)
        if bus is None:
            bus = _buses[name] = MemoryBus(name)
        return bus


class MemorySubscription:
    """A queue on a :class:`MemoryBus`, bound to one exchange."""

    def __init__(self, transport: MemoryTransport, queue: _Queue, generation: int) -> None:
        self._transport = transport
        self._queue = queue
        self._generation = generation
        self._closed = threading.Event()

    @property
    def dropped(self) -> int:
        """Messages dropped from the head of the queue because of ``max_length``."""
        return self._queue.dropped

    def receive(self, timeout: float | None = None) -> Sequence[IncomingMessage]:
        return self._transport.bus.take(self._queue, self._generation, timeout, self._closed)

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._transport.bus.unsubscribe(self._queue)
            self._transport._subscriptions.forget(self)


class MemoryTransport:
    """The in-memory transport: a handle on one :class:`MemoryBus`."""

    driver_type = "memory"
    capabilities = _CAPABILITIES

    def __init__(self, bus: MemoryBus | None = None) -> None:
        self.bus = bus if bus is not None else get_bus()
        self._subscriptions: OpenSubscriptions[MemorySubscription] = OpenSubscriptions()
        self._closed = False

    @classmethod
    def from_url(cls, url: str = "memory://", **options: Any) -> MemoryTransport:
        """Open ``memory://`` (the default bus) or ``memory://NAME`` (a named bus)."""
        if options:
            raise InvalidURL(f"memory:// takes no options, got {sorted(options)}")
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise InvalidURL(f"cannot parse {url!r}: {exc}") from None
        if parts.scheme != "memory":
            raise InvalidURL(f"not a memory:// URL: {url!r}")
        name = (parts.netloc + parts.path).strip("/")
        return cls(get_bus(name))

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        if self._closed:
            raise ConnectionLost("memory transport is closed")
        self.bus.publish(exchange, messages)

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> MemorySubscription:
        if self._closed:
            raise ConnectionLost("memory transport is closed")
        bus_queue, generation = self.bus.subscribe(exchange, binding_key, queue)
        subscription = MemorySubscription(self, bus_queue, generation)
        if not self._subscriptions.add(subscription):
            subscription.close()
            raise ConnectionLost("memory transport was closed while subscribing")
        return subscription

    def close(self) -> None:
        self._closed = True
        for subscription in self._subscriptions.close():
            subscription.close()

    def __repr__(self) -> str:
        return f"<MemoryTransport memory://{self.bus.name}>"
