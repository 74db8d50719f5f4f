"""Consume events: Celery's ``EventReceiver`` over any evcore transport."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, cast

from evcore import _live, codec
from evcore._connect import resolve_transport
from evcore.clock import LamportClock, default_clock
from evcore.errors import ConfigurationError, ConnectionLost, EventsDisabled, MessageRejected
from evcore.event import BOOT_HEADER, SEQ_HEADER
from evcore.eventid import DEFAULT_WINDOW, EVENT_ID_HEADER, SeenWindow
from evcore.nodename import utcoffset as local_utcoffset
from evcore.routing import binding_matches, events_disabled_because, exchange_type_for
from evcore.transport import (
    EVERY_PARTITION,
    FANOUT,
    TOPIC,
    DurableTransport,
    Exchange,
    IncomingMessage,
    QueueOptions,
    StreamOptions,
    StreamSubscription,
    Subscription,
    Transport,
)

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Any]
#: Told of events lost in transit: ``on_loss(sender hostname, count)``.
LossHandler = Callable[[str, int], Any]

#: ``task-sent`` clocks come from clients that never synchronise; they are placed just
#: behind the receiver's own clock instead (Celery's rule).
CLIENT_CLOCK_SKEW = -1

#: How long one wait on the transport may last, so ``should_stop`` is seen promptly.
POLL_INTERVAL = 1.0

#: Seconds after which a message read from a durable stream counts as replayed (history, a
#: restart, a backlog): its events take the broker's append time as ``local_received``, so
#: liveness, latencies and drift say when they happened. Messages read sooner take the
#: receiver's clock, so a small difference between the broker's clock and ours never shows.
REPLAY_AGE = 5.0

#: Sender lanes whose sequence numbers are tracked at once (a dispatcher has one lane per
#: partition on a durable transport); the least recently heard is forgotten.
MAX_TRACKED_SENDERS = 100_000

#: The lane of the copies a dispatcher appends to every partition of a durable transport.
EVERY_LANE = f"/{EVERY_PARTITION}"
#: Numbers of such copies seen ahead of the slowest partition that are remembered.
MAX_OUT_OF_ORDER = 100_000


@dataclass
class ReceiverStats:
    """Counters of what a Receiver saw and did."""

    messages: int = 0
    events: int = 0
    #: Messages or batch elements refused, by reason (``malformed``, ``content-type``,
    #: ``too-large``, ``not-an-event``, ...).
    rejected: Counter[str] = field(default_factory=Counter)
    #: Messages dropped because their routing key does not match the binding key (only on
    #: transports that cannot route exactly themselves).
    filtered: int = 0
    handler_errors: int = 0
    reconnects: int = 0
    #: Events known to be lost in transit, by sender hostname (from evcore's sequence
    #: headers; Celery's own senders carry none, so their losses cannot be seen).
    lost_events: Counter[str] = field(default_factory=Counter)
    #: Messages received twice (a resend after a failed publish, a copy appended to
    #: every partition, a re-read after a takeover) and dropped; for messages appended by
    #: ``evcore relay`` (keyed per event), the events dropped as copies.
    duplicates: int = 0
    #: Durable transports: messages retention removed before they were read (the events
    #: themselves are counted in ``lost_events`` through the sequence headers).
    trimmed: int = 0


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """A Receiver's connection to the broker, as last seen by the receiving thread."""

    #: True from a successful subscription until a connection error.
    connected: bool = False
    #: ``time.monotonic()`` when ``connected`` last changed (or the Receiver was created).
    since: float = field(default_factory=time.monotonic)
    #: Successful subscriptions after a lost connection or a failed first attempt (the
    #: same count as ``ReceiverStats.reconnects``).
    reconnects: int = 0
    #: Times the connection was lost after having been up.
    losses: int = 0
    #: The last connection error, or ``None`` while connected.
    error: str | None = None


#: Told when the Receiver connects or loses its connection: ``on_connection_change(state)``.
ConnectionHandler = Callable[[ConnectionState], Any]


def adjust_timestamp(timestamp: float, offset: float) -> float:
    """Celery's timestamp localisation: shift by the sender's and this host's offsets."""
    return timestamp - (offset - local_utcoffset()) * 3600


class Receiver:
    """Receive events from an exchange through a private queue and call handlers by type.

    >>> from evcore import Dispatcher, Receiver
    >>> seen = []
    >>> receiver = Receiver("memory://docs-receiver", handlers={"*": seen.append})
    >>> dispatcher = Dispatcher("memory://docs-receiver", hostname="w1@example")
    >>> _ = dispatcher.send("worker-online", freq=2.0)
    >>> receiver.capture(limit=1, timeout=1.0)
    1
    >>> seen[0]["type"], seen[0]["hostname"]
    ('worker-online', 'w1@example')
    >>> receiver.close(); dispatcher.close()
    """

    def __init__(
        self,
        transport_or_url: Transport | str = "memory://",
        handlers: Mapping[str, Handler] | None = None,
        routing_key: str = "#",
        node_id: str | None = None,
        queue_prefix: str = "celeryev",
        queue_ttl: float | None = 5.0,
        queue_expires: float | None = 60.0,
        queue_exclusive: bool = True,
        queue_durable: bool = False,
        queue_max_length: int | None = None,
        accept: Iterable[str] = ("application/json",),
        exchange: str = "celeryev",
        clock: LamportClock | None = None,
        localize: bool = False,
        max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES,
        raise_handler_errors: bool = False,
        reconnect_delay: tuple[float, float] = (0.1, 5.0),
        on_loss: LossHandler | None = None,
        on_connection_change: ConnectionHandler | None = None,
        stream: StreamOptions | None = None,
        sequences: Mapping[str, Any] | None = None,
        dedup_window: int = DEFAULT_WINDOW,
        seen_ids: Iterable[tuple[str, int | None]] | None = None,
    ) -> None:
        if queue_exclusive and queue_durable:
            raise ConfigurationError("an event queue cannot be both exclusive and durable")
        self.transport, self._owns_transport = resolve_transport(transport_or_url)
        if stream is not None and not self.transport.capabilities.durable:
            if self._owns_transport:
                self.transport.close()
            raise ConfigurationError(
                f"stream options need a durable transport; {self.transport.driver_type!r} "
                "keeps no messages"
            )
        reason = events_disabled_because(self.transport)
        if reason:
            if self._owns_transport:
                self.transport.close()
            raise EventsDisabled(f"cannot receive events here: {reason}")
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.routing_key = routing_key
        self.node_id = node_id or str(uuid.uuid4())
        self.exchange = Exchange(exchange, exchange_type_for(self.transport) or TOPIC)
        self.queue = QueueOptions(
            name=f"{queue_prefix}.{self.node_id}",
            exclusive=queue_exclusive,
            auto_delete=not queue_durable,
            durable=queue_durable,
            message_ttl=queue_ttl,
            expires=queue_expires,
            max_length=queue_max_length,
        )
        self.accept = codec.accepted_content_types(accept)
        self.clock = clock if clock is not None else default_clock
        self.localize = localize
        self.max_message_bytes = max_message_bytes
        self.raise_handler_errors = raise_handler_errors
        self.reconnect_delay = reconnect_delay
        #: Called with ``(hostname, count)`` for each gap found; ``State.record_loss`` fits.
        self.on_loss = on_loss
        #: Called with the new :class:`ConnectionState` whenever ``connected`` flips, from
        #: the thread that is receiving (or creating the Receiver).
        self.on_connection_change = on_connection_change
        self._connection = ConnectionState()
        self.stats = ReceiverStats()
        #: Set to True (from a handler or another thread) to end ``capture()``.
        self.should_stop = False
        # A fanout exchange ignores binding keys, and a transport without exact routing
        # applies its own: either way the core filters by the binding key itself.
        self._filter_routing = routing_key != "#" and (
            not self.transport.capabilities.exact_routing or self.exchange.type == FANOUT
        )
        self._subscription: Subscription | StreamSubscription | None = None
        #: On a durable transport, how this receiver reads the streams (None: pub/sub).
        self.stream = (
            self._wrap_stream(stream or StreamOptions())
            if self.transport.capabilities.durable
            else None
        )
        #: Position of the last message applied whole, per partition (durable only).
        self._applied: dict[int, IncomingMessage] = {}
        #: Messages read but whose events are not all handled: (events queued up to and
        #: including it, message), in order.
        self._marks: deque[tuple[int, IncomingMessage]] = deque()
        self._queued = 0
        self._pending: deque[dict[str, Any]] = deque()
        restored = dict(sequences or {})
        self._expected_seq: dict[str, int] = {
            lane: seq for lane, seq in restored.items() if not lane.endswith(EVERY_LANE)
        }
        #: Copies appended to every partition arrive once per partition, each partition at
        #: its own pace: per such lane, the next number not yet seen in order, and the
        #: numbers seen beyond it (see ``_everywhere_in_sequence``).
        self._everywhere: dict[str, tuple[int, set[int]]] = {
            lane: (int(state[0]), set(state[1]))
            for lane, state in restored.items()
            if lane.endswith(EVERY_LANE)
        }
        #: Sequence lanes restored from a checkpoint: they hold again for the partitions
        #: ``on_assigned`` places at that checkpoint's positions.
        self._restored_seq = dict(self._expected_seq)
        #: Keys of the recent events that carried one (appended by ``evcore relay``): a
        #: second relay's copy of an event is dropped while its key is in this window.
        self._seen_ids = SeenWindow(dedup_window)
        #: Keys restored from a checkpoint: they hold again for the partitions
        #: ``on_assigned`` places at that checkpoint's positions (as ``sequences`` do).
        self._restored_ids = list(seen_ids or ())
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._subscribe()
        except ConnectionLost as exc:
            logger.warning("receiver could not subscribe yet, will retry: %s", exc)
            self._connection_down(exc)
        else:
            self._connection_up(reconnected=False)
        _live.track(self)

    # -- connection state -----------------------------------------------------------------

    @property
    def connection(self) -> ConnectionState:
        """The connection to the broker: up or not, since when, reconnects, last error."""
        return self._connection

    @property
    def connected(self) -> bool:
        """Whether the Receiver is subscribed and has seen no connection error since."""
        return self._connection.connected

    def _connection_up(self, reconnected: bool) -> None:
        old = self._connection
        if old.connected:
            return
        self._set_connection(
            replace(
                old,
                connected=True,
                since=time.monotonic(),
                reconnects=old.reconnects + reconnected,
                error=None,
            )
        )

    def _connection_down(self, exc: ConnectionLost) -> None:
        old = self._connection
        error = str(exc) or type(exc).__name__
        if not old.connected:
            self._connection = replace(old, error=error)
            return
        self._set_connection(
            replace(
                old, connected=False, since=time.monotonic(), losses=old.losses + 1, error=error
            )
        )

    def _set_connection(self, state: ConnectionState) -> None:
        self._connection = state
        if self.on_connection_change is None:
            return
        try:
            self.on_connection_change(state)
        except Exception:
            self.stats.handler_errors += 1
            if self.raise_handler_errors:
                raise
            logger.exception("on_connection_change callback raised")

    # -- subscription ---------------------------------------------------------------------

    def _subscribe(self) -> Subscription | StreamSubscription:
        with self._lock:
            if self._subscription is None:
                if self.stream is not None:
                    durable: DurableTransport = self.transport  # type: ignore[assignment]
                    self._subscription = durable.subscribe_stream(
                        self.exchange, self.routing_key, self.stream
                    )
                else:
                    self._subscription = self.transport.subscribe(
                        self.exchange, self.routing_key, self.queue
                    )
            return self._subscription

    # -- durable streams ------------------------------------------------------------------

    def _wrap_stream(self, options: StreamOptions) -> StreamOptions:
        """Hook the receiver into assignment changes. A partition whose events this
        receiver still holds (a subscription renewed after a lost connection) continues
        after the last message applied; any other starts fresh sequence lanes, so events
        re-read from a checkpoint or from history are not taken for duplicates."""
        on_assigned, on_revoked = options.on_assigned, options.on_revoked

        def assigned(partitions: frozenset[int]) -> Mapping[int, str] | None:
            self._settle()
            held = {p: m.position for p, m in self._applied.items() if p in partitions}
            fresh = partitions.difference(held)
            self._forget_lanes(fresh)
            self._seen_ids.forget(fresh)
            chosen = dict(on_assigned(fresh) or {}) if on_assigned is not None and fresh else {}
            self._restore_lanes(frozenset(chosen).intersection(fresh))
            self._restore_ids(frozenset(chosen).intersection(fresh))
            chosen.update({p: position for p, position in held.items() if position is not None})
            return chosen

        def revoked(partitions: frozenset[int]) -> None:
            self._settle()
            if on_revoked is not None:
                on_revoked(partitions)
            self._forget_lanes(partitions)
            self._seen_ids.forget(partitions)
            for partition in partitions:
                self._applied.pop(partition, None)

        member = options.member
        if options.group is not None and member is None:
            member = f"{socket.gethostname()}.{self.node_id}"
        return dataclasses.replace(options, member=member, on_assigned=assigned, on_revoked=revoked)

    def _restore_lanes(self, partitions: frozenset[int]) -> None:
        suffixes = tuple(f"/{partition}" for partition in partitions)
        for boot, seq in self._restored_seq.items():
            if boot.endswith(suffixes):
                self._expected_seq[boot] = seq

    def _restore_ids(self, partitions: frozenset[int]) -> None:
        self._seen_ids.restore(
            (key, partition)
            for key, partition in self._restored_ids
            if partition is None or partition in partitions
        )

    def seen_ids(self, limit: int | None = None) -> list[tuple[str, int | None]]:
        """The most recent relay event keys (see :mod:`evcore.eventid`) with the partition
        each came from, oldest first: saved with a checkpoint and given back as
        ``seen_ids=``, so that a resumed receiver still drops a second relay's copy of an
        event the checkpoint already holds."""
        return self._seen_ids.recent(limit)

    def sequences(self) -> dict[str, Any]:
        """Where each sender lane stands (JSON-serialisable): saved with a checkpoint and
        given back as ``sequences=`` so that a resumed receiver neither re-applies nor
        miscounts as lost what the checkpoint already holds."""
        lanes: dict[str, Any] = dict(self._expected_seq)
        for lane, (following, beyond) in self._everywhere.items():
            lanes[lane] = [following, sorted(beyond)]
        return lanes

    def _forget_lanes(self, partitions: frozenset[int]) -> None:
        suffixes = tuple(f"/{partition}" for partition in partitions)
        for boot in [boot for boot in self._expected_seq if boot.endswith(suffixes)]:
            del self._expected_seq[boot]

    def _settle(self) -> list[IncomingMessage]:
        """Move messages whose events are all handled to the applied positions; return the
        newest of each partition among them (what to acknowledge)."""
        handled = self._queued - len(self._pending)
        marks = self._marks
        newest: dict[int, IncomingMessage] = {}
        while marks and marks[0][0] <= handled:
            message = marks.popleft()[1]
            newest[message.partition] = message  # type: ignore[index]
        self._applied.update(newest)
        return list(newest.values())

    @property
    def pending_events(self) -> int:
        """Events decoded but not handled yet (the rest of a batch after a ``limit``)."""
        return len(self._pending)

    def positions(self) -> dict[int, str]:
        """Per partition, the position of the last message whose events are all handled:
        where a restart resumes (after it) for State to be exact. Durable transports only."""
        self._settle()
        return {
            partition: message.position
            for partition, message in self._applied.items()
            if message.position is not None
        }

    def assignment(self) -> frozenset[int]:
        """The partitions this receiver owns now (durable transports; empty otherwise)."""
        subscription = self._subscription
        if self.stream is None or subscription is None:
            return frozenset()
        return cast(StreamSubscription, subscription).assignment()

    def _drop_subscription(self) -> None:
        with self._lock:
            subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(ConnectionLost):
                subscription.close()

    def _resubscribe(self, deadline: float | None) -> Subscription | None:
        """Subscribe again after a lost connection, backing off with jitter. None if the
        deadline passes or the receiver is stopped first."""
        first, cap = self.reconnect_delay
        attempt = 0
        while not self.should_stop:
            try:
                subscription = self._subscribe()
            except ConnectionLost as exc:
                self._connection_down(exc)
                delay = min(cap, first * 2**attempt) * random.uniform(0.5, 1.0)
                attempt += 1
                logger.warning("receiver reconnect failed (%s); next try in %.2fs", exc, delay)
                if deadline is not None:
                    delay = min(delay, deadline - time.monotonic())
                    if delay <= 0:
                        return None
                self._sleep(delay)
                continue
            self.stats.reconnects += 1
            self._connection_up(reconnected=True)
            return subscription
        return None

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.should_stop:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    # -- consuming ------------------------------------------------------------------------

    def itercapture(
        self, limit: int | None = None, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield events as they are handled: at most ``limit`` events, for at most
        ``timeout`` seconds in all, until ``should_stop`` is set.

        Events of a message that are not reached before the loop ends (the rest of a batch
        after ``limit`` or a stop) are kept and handled first by the next call.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        remaining = limit
        pending = self._pending
        process = self.process
        while not self.should_stop and (remaining is None or remaining > 0):
            if not pending:
                if not self._fill(deadline):
                    return
                continue
            event = pending.popleft()
            process(event["type"], event)
            yield event
            if remaining is not None:
                remaining -= 1

    def capture(self, limit: int | None = None, timeout: float | None = None) -> int:
        """Handle events until ``limit`` events, ``timeout`` seconds or ``should_stop``;
        return how many events were handled.

        Unlike Celery, ``limit`` counts events (a ``task.multi`` batch counts each of its
        events) and running out of ``timeout`` returns instead of raising.
        """
        # The loop of itercapture() without a generator in between: it runs per event.
        deadline = None if timeout is None else time.monotonic() + timeout
        bound = -1 if limit is None else max(limit, 0)
        handled = 0
        pending = self._pending
        process = self.process
        while handled != bound and not self.should_stop:
            if not pending:
                if not self._fill(deadline):
                    break
                continue
            event = pending.popleft()
            process(event["type"], event)
            handled += 1
        return handled

    def _fill(self, deadline: float | None) -> bool:
        """Wait up to the deadline (or one poll interval) for messages and queue their
        events, subscribing again if the connection was lost; False when the time is up,
        the receiver is closed or it could not subscribe again in time."""
        wait = POLL_INTERVAL
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return False
        subscription = self._subscription
        try:
            if subscription is None:
                subscription = self._resubscribe(deadline)
                if subscription is None:
                    return False
            if self.stream is not None:
                return self._fill_stream(cast(StreamSubscription, subscription), wait)
            messages = subscription.receive(wait)
        except ConnectionLost as exc:
            if self._closed:
                return False
            logger.warning("receiver lost its connection: %s", exc)
            self._connection_down(exc)
            self._drop_subscription()
            return True
        pending = self._pending
        events_of = self._events_of
        for message in messages:
            pending.extend(events_of(message))
        return True

    def _fill_stream(self, subscription: StreamSubscription, wait: float) -> bool:
        """``_fill`` on a durable transport: acknowledge what is applied, then read."""
        done = self._settle()
        if done:
            subscription.ack(done)
        messages = subscription.receive(wait)
        stats = self.stats
        stats.trimmed = subscription.trimmed
        pending = self._pending
        marks = self._marks
        events_of = self._events_of
        for message in messages:
            events = events_of(message)
            pending.extend(events)
            self._queued += len(events)
            if message.partition is not None:
                marks.append((self._queued, message))
        return True

    def process(self, type: str, event: dict[str, Any]) -> None:
        """Call the handler for ``type``, or the ``"*"`` handler, with ``event``."""
        handler = self.handlers.get(type) or self.handlers.get("*")
        if handler is None:
            return
        try:
            handler(event)
        except Exception:
            self.stats.handler_errors += 1
            if self.raise_handler_errors:
                raise
            logger.exception("event handler for %r raised", type)

    # -- decoding -------------------------------------------------------------------------

    def _events_of(self, message: IncomingMessage) -> list[dict[str, Any]]:
        """Decode one message into its events, counting and skipping what is refused."""
        stats = self.stats
        stats.messages += 1
        if message.rejected is not None:
            stats.rejected[message.rejected] += 1
            return []
        if self._filter_routing and not binding_matches(self.routing_key, message.routing_key):
            stats.filtered += 1
            return []
        try:
            body = codec.decode_body(
                message.body,
                message.content_type,
                message.content_encoding,
                self.accept,
                self.max_message_bytes,
            )
        except MessageRejected as exc:
            stats.rejected[exc.reason] += 1
            logger.warning("rejected a message on %r: %s", message.routing_key, exc)
            return []
        ids = message.headers.get(EVENT_ID_HEADER)
        if ids.__class__ is not list:
            ids = None
        received = message.appended_at
        if received is not None and time.time() - received <= REPLAY_AGE:
            received = None  # read live: the receiver's own clock, as on pub/sub
        if body.__class__ is not list:
            # One event per message, the common case.
            if not self._in_sequence(message.headers, 1):
                return []
            if body.__class__ is not dict or body.get("type").__class__ is not str:
                stats.rejected["not-an-event"] += 1
                return []
            if ids and self._seen_before(ids[0], message.partition):
                return []
            stats.events += 1
            return [self.event_from_message(body, received)]
        if not self._in_sequence(message.headers, len(body)):
            return []
        events = []
        from_message = self.event_from_message
        for index, item in enumerate(body):
            if item.__class__ is not dict or item.get("type").__class__ is not str:
                stats.rejected["not-an-event"] += 1
                continue
            if ids and index < len(ids) and self._seen_before(ids[index], message.partition):
                continue
            events.append(from_message(item, received))
        stats.events += len(events)
        return events

    def _in_sequence(self, headers: Mapping[str, Any], count: int) -> bool:
        """Track the sender's sequence numbers: count a gap as lost events; False for a
        message already seen (a duplicate)."""
        boot, seq = headers.get(BOOT_HEADER), headers.get(SEQ_HEADER)
        if boot.__class__ is not str or seq.__class__ is not int:
            return True
        if boot.endswith(EVERY_LANE):
            return self._everywhere_in_sequence(boot, seq, count)
        expected = self._expected_seq.pop(boot, None)
        if expected is not None and seq < expected:
            self._expected_seq[boot] = expected
            self.stats.duplicates += 1
            return False
        if expected is not None and seq > expected:
            lost = seq - expected
            sender = str(headers.get("hostname", boot))
            self.stats.lost_events[sender] += lost
            logger.warning("%d event(s) from %s were lost in transit", lost, sender)
            if self.on_loss is not None:
                self._report_loss(self.on_loss, sender, lost)
        self._expected_seq[boot] = seq + count
        if len(self._expected_seq) > MAX_TRACKED_SENDERS:
            del self._expected_seq[next(iter(self._expected_seq))]
        return True

    def _everywhere_in_sequence(self, lane: str, seq: int, count: int) -> bool:
        """Drop the extra copies of a message appended to every partition.

        Partitions are read at different paces, and one given to this receiver later may
        start ahead of the others, so these numbers are not seen in order: remember the
        first number not yet seen in order and the numbers seen beyond it. No gap is counted
        here (a number missing from one partition comes from another); the partitions' own
        lanes count what is lost. The first copy seen starts the lane: older ones are taken
        as already applied.
        """
        everywhere = self._everywhere
        state = everywhere.pop(lane, None)  # re-inserted below: least recently heard first
        if state is None:
            everywhere[lane] = (seq + count, set())
            if len(everywhere) > MAX_TRACKED_SENDERS:
                del everywhere[next(iter(everywhere))]
            return True
        following, beyond = state
        if seq < following or seq in beyond:
            everywhere[lane] = state
            self.stats.duplicates += 1
            return False
        if seq == following:
            following += count
            while following in beyond:
                beyond.discard(following)
                following += 1
        else:
            beyond.update(range(seq, seq + count))
            if len(beyond) > MAX_OUT_OF_ORDER:
                # Numbers missing from every partition for this long are not coming.
                following = min(beyond)
                while following in beyond:
                    beyond.discard(following)
                    following += 1
        everywhere[lane] = (following, beyond)
        return True

    def _seen_before(self, key: Any, partition: int | None) -> bool:
        """Whether an event with this relay key was already handled (then counted as a
        duplicate); remembers it otherwise."""
        if key.__class__ is not str or not self._seen_ids.seen(key, partition):
            return False
        self.stats.duplicates += 1
        return True

    def _report_loss(self, on_loss: LossHandler, sender: str, lost: int) -> None:
        try:
            on_loss(sender, lost)
        except Exception:
            self.stats.handler_errors += 1
            if self.raise_handler_errors:
                raise
            logger.exception("on_loss callback raised")

    def event_from_message(
        self, body: dict[str, Any], received: float | None = None
    ) -> dict[str, Any]:
        """Apply the receive-side rules to a decoded event (in place) and return it.

        Adjusts the local clock as Celery does (``task-sent`` clocks are replaced by one just
        behind ours), gives a missing or non-numeric clock a local one, optionally localises
        the timestamp, and sets ``local_received`` (to ``received`` if given, else now).
        """
        clock = body.get("clock")
        if body["type"] == "task-sent":
            body["clock"] = (self.clock.value or 1) + CLIENT_CLOCK_SKEW
            self.clock.adjust(body["clock"])
        elif clock.__class__ is int:
            self.clock.adjust(clock)
        else:
            body["clock"] = self.clock.forward()
        if self.localize:
            offset, timestamp = body.get("utcoffset"), body.get("timestamp")
            if isinstance(offset, int | float) and isinstance(timestamp, int | float):
                with contextlib.suppress(OverflowError):  # integers beyond any float
                    body["timestamp"] = adjust_timestamp(timestamp, offset)
        body["local_received"] = time.time() if received is None else received
        return body

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop capturing (from any thread) and release the queue."""
        self.should_stop = True
        self._closed = True
        self._drop_subscription()
        if self._owns_transport:
            self.transport.close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` ran."""
        return self._closed

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Receiver {self.queue.name} {self.exchange.type}:{self.exchange.name}>"


#: Celery's name, so ``from celery.events import EventReceiver`` ports by changing imports.
EventReceiver = Receiver
