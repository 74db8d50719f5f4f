"""The Transport protocol: the small cut-off between evcore's core and a broker adapter.

An adapter moves already-encoded bytes and nothing else. The core owns serialisation, the
Lamport clock, batching, the routing and binding rules, decoding and buffering; an adapter
owns connecting, publishing, subscribing and mapping its client's failures onto
:mod:`evcore.errors` (:class:`~evcore.errors.ConnectionLost` for anything that a reconnect
can cure, :class:`~evcore.errors.ChannelError` for a refusal that it cannot).

See ``docs/writing-a-transport.md`` for a walk through a complete adapter.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

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
    #: On a durable transport, the partition to append to (see :func:`partition_for`);
    #: :data:`EVERY_PARTITION` appends a copy to each one. ``None`` leaves it to the
    #: transport (partition 0). Pub/sub transports ignore it.
    partition: int | None = None


@dataclass(slots=True, unsafe_hash=True)
class IncomingMessage:
    """One message as a subscription hands it back, still encoded.

    Treat it as immutable: nothing in evcore changes a message once it is built (use
    :func:`dataclasses.replace` for a changed copy). It is not declared frozen only because
    a frozen dataclass costs several times more to construct, once per received message;
    equality, hashing (``unsafe_hash``) and ``replace`` work as for a frozen one.
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
    #: Set by a durable transport: the partition the message was read from and its
    #: position there (opaque; hand it back in :class:`StreamOptions` to resume after it).
    partition: int | None = None
    position: str | None = None
    #: Set by a durable transport that knows it: when the broker appended the message
    #: (seconds since the epoch, on the broker's clock). Events of a message read long
    #: after it was appended (history, a restart) take it as their ``local_received``.
    appended_at: float | None = None


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
    ``durable``: the transport keeps messages in partitioned streams with positions and
    implements :class:`DurableTransport` (``subscribe_stream``).
    ``partitions``: how many partitions its streams have (fixed per deployment, 1 for
    pub/sub transports).
    ``max_body_size``: the largest body, in bytes, one message may carry (a broker with a
    small message limit: PostgreSQL's NOTIFY, SQS); ``None`` when there is none to respect.
    A Dispatcher splits its batches to fit and refuses, counted, a single larger event.
    """

    broadcast: bool = True
    exact_routing: bool = True
    exchange_types: frozenset[str] = frozenset({TOPIC, FANOUT})
    queue_options: frozenset[str] = frozenset()
    persistent: bool = False
    durable: bool = False
    partitions: int = 1
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


# -- the durable side: partitioned streams with positions -----------------------------------

#: :attr:`OutgoingMessage.partition` for a message every partition needs a copy of (worker
#: events: every monitor holding tasks of a worker needs that worker's heartbeats).
EVERY_PARTITION = -1

#: Where a reader starts in a partition: its oldest retained message, or only what is
#: appended from now on. A position string instead resumes just after that message.
EARLIEST = "earliest"
LATEST = "latest"
Start = Literal["earliest", "latest"] | str

#: Told of partitions this member just got: returns where to start in each of them (a
#: position, ``EARLIEST`` or ``LATEST``), typically from the checkpoint restored for it;
#: partitions left out start at the group's acknowledged position, else at
#: :attr:`StreamOptions.start`.
AssignedHandler = Callable[[frozenset[int]], Mapping[int, str] | None]
#: Told of partitions this member is about to give up (before another member may read
#: them): the moment to checkpoint their State and drop it.
RevokedHandler = Callable[[frozenset[int]], None]


def partition_for(key: str, partitions: int) -> int:
    """The partition a key (a task uuid) belongs to: stable across processes and hosts.

    >>> partition_for("d0b7a1b2-6c43-4a2e-9f0e-1c2d3e4f5a6b", 16) == partition_for(
    ...     "d0b7a1b2-6c43-4a2e-9f0e-1c2d3e4f5a6b", 16)
    True
    """
    if partitions <= 1:
        return 0
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """How a stream subscription reads: as which member of which group, from where.

    ``group``: members of one group split the partitions between them, each partition
    owned by one member at a time; ``None`` reads every partition alone, sharing nothing.
    ``member``: this member's name in the group (unique per process; a random one when
    ``None``). ``start``: where to begin in a partition that neither ``on_assigned`` nor an
    acknowledgement of the group places: ``EARLIEST``, ``LATEST``, or a position per
    partition (partitions missing from the mapping start at ``EARLIEST``).
    ``lease``: seconds a member keeps a partition without showing signs of life (calling
    ``receive``); after that another member may take it over.
    """

    group: str | None = None
    member: str | None = None
    start: Start | Mapping[int, str] = LATEST
    lease: float = 10.0
    on_assigned: AssignedHandler | None = None
    on_revoked: RevokedHandler | None = None


@runtime_checkable
class StreamSubscription(Protocol):
    """A member's reader over the partitions it owns, with positions and acknowledgements.

    Delivery is at-least-once: what is read but not acknowledged is read again by the next
    owner of its partition. Messages of one partition arrive in append order. Assignment
    changes are announced through :class:`StreamOptions`' callbacks, from inside
    ``receive`` (so on the consuming thread), before any message of a new partition; a
    reader without a group is given every partition by ``subscribe_stream`` itself.
    """

    def receive(self, timeout: float | None = None) -> Sequence[IncomingMessage]:
        """Return messages of the owned partitions (each with ``partition`` and
        ``position`` set), waiting up to ``timeout`` seconds; also renews this member's
        leases and takes or gives up partitions as the group changes. Raises
        :class:`~evcore.errors.ConnectionLost` when the connection drops."""
        ...

    def ack(self, messages: Iterable[IncomingMessage]) -> None:
        """Acknowledge ``messages`` as applied. Cumulative per partition: acknowledging a
        message acknowledges every earlier message of its partition."""
        ...

    def assignment(self) -> frozenset[int]:
        """The partitions this member owns now."""
        ...

    @property
    def trimmed(self) -> int:
        """Messages retention removed before this member read them (at least one per gap
        when the broker cannot count them): a reader that fell behind the window."""
        ...

    def close(self) -> None:
        """Stop reading and give up the partitions at once (unacknowledged messages go to
        the next owner). Safe to call twice."""
        ...


@runtime_checkable
class DurableTransport(Transport, Protocol):
    """A transport whose capabilities declare ``durable``: streams kept with positions."""

    def subscribe_stream(
        self, exchange: Exchange, binding_key: str, options: StreamOptions
    ) -> StreamSubscription:
        """Start reading ``exchange``'s partitions as ``options`` says; messages whose
        routing key ``binding_key`` does not match are skipped (and acknowledged)."""
        ...


class TransportFactory(Protocol):
    """What an ``evcore.transports`` entry point names: usually the transport class."""

    def from_url(self, url: str, **options: Any) -> Transport:
        """Build a transport for ``url``; raise :class:`~evcore.errors.InvalidURL` or
        :class:`~evcore.errors.MissingDependency` when it cannot."""
        ...
