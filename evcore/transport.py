"""The Transport protocol: the small cut-off between evcore's core and a broker adapter.

An adapter moves already-encoded bytes and nothing else. The core owns serialisation, the
Lamport clock, batching, the routing and binding rules, decoding and buffering; an adapter
owns connecting, publishing, subscribing and mapping its client's failures onto
:mod:`evcore.errors` (:class:`~evcore.errors.ConnectionLost` for anything that a reconnect
can cure, :class:`~evcore.errors.ChannelError` for a refusal that it cannot).

See ``docs/writing-a-transport.md`` for a walk through a complete adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: Exchange types the core knows about.
TOPIC = "topic"
FANOUT = "fanout"
DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class Exchange:
    """Where events are published: a name and an AMQP exchange type."""

    name: str
    type: str = TOPIC
    durable: bool = True
    auto_delete: bool = False


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One encoded message to publish: an event, or a batch of events as a list."""

    routing_key: str
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    delivery_mode: int = 1
    priority: int = 0


@dataclass(slots=True, unsafe_hash=True)
class IncomingMessage:
    """One message as a subscription hands it back, still encoded.

    Treat it as immutable: nothing in evcore changes a message once it is built (use
    :func:`dataclasses.replace` for a changed copy). It is not declared frozen only because
    a frozen dataclass costs several times more to construct, once per received message;
    equality, hashing and ``replace`` behave as before.
    """

    body: bytes
    routing_key: str
    exchange: str = ""
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"
    headers: Mapping[str, Any] = field(default_factory=dict)
    #: Set by an adapter that received something it could not unpack (a broken envelope):
    #: the reason, in the words of :class:`~evcore.errors.MessageRejected`. The core counts
    #: it among the rejected messages and skips it, so nothing received goes uncounted.
    rejected: str | None = None


@dataclass(frozen=True, slots=True)
class QueueOptions:
    """The private queue a subscription reads from, in AMQP terms.

    Times are in seconds; ``None`` leaves the broker's default. Transports without queues
    (Redis pub/sub) ignore what they cannot honour, and say so in their
    :class:`Capabilities`.
    """

    name: str
    exclusive: bool = True
    auto_delete: bool = True
    durable: bool = False
    message_ttl: float | None = 5.0
    expires: float | None = 60.0
    max_length: int | None = None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport can do, so the core and the conformance suite can adapt.

    ``broadcast``: every subscription receives every matching message (required for events).
    ``exact_routing``: the broker applies AMQP binding semantics itself; when False the core
    filters received messages by the binding key.
    ``exchange_types``: the exchange types it accepts.
    ``queue_options``: the :class:`QueueOptions` fields it enforces, besides ``name``.
    ``persistent``: messages survive a subscriber that is away (a queue or a stream).
    ``max_body_size``: the largest body, in bytes, one message may carry (a broker with a
    small message limit: PostgreSQL's NOTIFY, SQS); ``None`` when there is none to respect.
    A Dispatcher splits its batches to fit and refuses, counted, a single larger event.
    """

    broadcast: bool = True
    exact_routing: bool = True
    exchange_types: frozenset[str] = frozenset({TOPIC, FANOUT})
    queue_options: frozenset[str] = frozenset()
    persistent: bool = False
    max_body_size: int | None = None


@runtime_checkable
class Subscription(Protocol):
    """A bound private queue that messages can be read from."""

    def receive(self, timeout: float | None = None) -> Sequence[IncomingMessage]:
        """Return the messages that have arrived, waiting up to ``timeout`` seconds for one.

        Returns an empty sequence when the time runs out; ``None`` waits until something
        arrives or the subscription is closed. Raises
        :class:`~evcore.errors.ConnectionLost` when the connection drops.
        """
        ...

    def close(self) -> None:
        """Cancel the subscription and release its queue. Safe to call twice."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A connection to a broker, as evcore's core sees it."""

    #: The broker family (``"memory"``, ``"redis"``, ``"amqp"``, ``"sql"``...): the core's
    #: exchange rules key on it.
    driver_type: str
    capabilities: Capabilities

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages`` to ``exchange``, in order, declaring it if needed.

        Raises :class:`~evcore.errors.ConnectionLost` if they may not have been sent.
        """
        ...

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> Subscription:
        """Bind a private queue to ``exchange`` with ``binding_key`` and start consuming."""
        ...

    def close(self) -> None:
        """Release the connection and every open subscription. Safe to call twice."""
        ...


class TransportFactory(Protocol):
    """What an ``evcore.transports`` entry point names: usually the transport class."""

    def from_url(self, url: str, **options: Any) -> Transport:
        """Build a transport for ``url``; raise :class:`~evcore.errors.InvalidURL` or
        :class:`~evcore.errors.MissingDependency` when it cannot."""
        ...
