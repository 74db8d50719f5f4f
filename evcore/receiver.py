"""Consume events: Celery's ``EventReceiver`` over any evcore transport."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from evcore import _live, codec
from evcore._connect import resolve_transport
from evcore.clock import LamportClock, default_clock
from evcore.dispatcher import BOOT_HEADER, SEQ_HEADER
from evcore.errors import ConfigurationError, ConnectionLost, EventsDisabled, MessageRejected
from evcore.nodename import utcoffset as local_utcoffset
from evcore.routing import binding_matches, events_disabled_because, rule_for
from evcore.transport import Exchange, IncomingMessage, QueueOptions, Subscription, Transport

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Any]
#: Told of events lost in transit: ``on_loss(sender hostname, count)``.
LossHandler = Callable[[str, int], Any]

#: ``task-sent`` clocks come from clients that never synchronise; they are placed just
#: behind the receiver's own clock instead (Celery's rule).
CLIENT_CLOCK_SKEW = -1

#: How long one wait on the transport may last, so ``should_stop`` is seen promptly.
POLL_INTERVAL = 1.0

#: Senders whose sequence numbers are tracked at once; the least recently heard is forgotten.
MAX_TRACKED_SENDERS = 10_000


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
    #: Messages received twice (a resend after a failed publish) and dropped.
    duplicates: int = 0


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
    ) -> None:
        if queue_exclusive and queue_durable:
            raise ConfigurationError("an event queue cannot be both exclusive and durable")
        self.transport, self._owns_transport = resolve_transport(transport_or_url)
        reason = events_disabled_because(self.transport)
        if reason:
            if self._owns_transport:
                self.transport.close()
            raise EventsDisabled(f"cannot receive events here: {reason}")
        rule = rule_for(self.transport.driver_type)
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.routing_key = routing_key
        self.node_id = node_id or str(uuid.uuid4())
        self.exchange = Exchange(exchange, rule.exchange_type)
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
        self.stats = ReceiverStats()
        #: Set to True (from a handler or another thread) to end ``capture()``.
        self.should_stop = False
        self._filter_routing = not self.transport.capabilities.exact_routing and routing_key != "#"
        self._subscription: Subscription | None = None
        self._pending: deque[dict[str, Any]] = deque()
        self._expected_seq: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._subscribe()
        except ConnectionLost as exc:
            logger.warning("receiver could not subscribe yet, will retry: %s", exc)
        _live.track(self)

    # -- subscription ---------------------------------------------------------------------

    def _subscribe(self) -> Subscription:
        with self._lock:
            if self._subscription is None:
                self._subscription = self.transport.subscribe(
                    self.exchange, self.routing_key, self.queue
                )
            return self._subscription

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
            messages = subscription.receive(wait)
        except ConnectionLost as exc:
            if self._closed:
                return False
            logger.warning("receiver lost its connection: %s", exc)
            self._drop_subscription()
            return True
        pending = self._pending
        events_of = self._events_of
        for message in messages:
            pending.extend(events_of(message))
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
        if body.__class__ is not list:
            # One event per message, the common case.
            if not self._in_sequence(message.headers, 1):
                return []
            if body.__class__ is not dict or body.get("type").__class__ is not str:
                stats.rejected["not-an-event"] += 1
                return []
            stats.events += 1
            return [self.event_from_message(body)]
        if not self._in_sequence(message.headers, len(body)):
            return []
        events = []
        from_message = self.event_from_message
        for item in body:
            if item.__class__ is not dict or item.get("type").__class__ is not str:
                stats.rejected["not-an-event"] += 1
                continue
            events.append(from_message(item))
        stats.events += len(events)
        return events

    def _in_sequence(self, headers: Mapping[str, Any], count: int) -> bool:
        """Track the sender's sequence numbers: count a gap as lost events; False for a
        message already seen (a duplicate)."""
        boot, seq = headers.get(BOOT_HEADER), headers.get(SEQ_HEADER)
        if boot.__class__ is not str or seq.__class__ is not int:
            return True
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

    def _report_loss(self, on_loss: LossHandler, sender: str, lost: int) -> None:
        try:
            on_loss(sender, lost)
        except Exception:
            self.stats.handler_errors += 1
            if self.raise_handler_errors:
                raise
            logger.exception("on_loss callback raised")

    def event_from_message(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply the receive-side rules to a decoded event (in place) and return it.

        Adjusts the local clock as Celery does (``task-sent`` clocks are replaced by one just
        behind ours), gives a missing or non-numeric clock a local one, optionally localises
        the timestamp, and sets ``local_received``.
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
        body["local_received"] = time.time()
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
