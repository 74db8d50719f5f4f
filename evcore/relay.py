"""Relay events from a pub/sub transport into a durable one, for unmodified Celery workers.

A :class:`Relay` subscribes once to the source (any evcore URL: ``redis://``, ``amqp://``,
``memory://``...) and appends every event it receives, in arrival order, to the streams of
a durable destination (a transport declaring ``capabilities.durable``). Each event goes to
its task's partition (by uuid; events without a uuid, such as worker heartbeats, to every
partition) and is stamped with an idempotency key (:mod:`evcore.eventid`), so that readers
drop the copies a second relay on the same source appends.

>>> from evcore import Dispatcher, Receiver
>>> from evcore.transport import EARLIEST, StreamOptions
>>> relay = Relay("memory://docs-relay", "memory+stream://docs-relay?partitions=2")
>>> with Dispatcher("memory://docs-relay", hostname="w1@example") as dispatcher:
...     _ = dispatcher.send("task-received", uuid="t1", name="add")
>>> relay.run(duration=0.2)
>>> relay.stats.forwarded
1
>>> relay.close()
>>> seen = []
>>> reader = Receiver("memory+stream://docs-relay?partitions=2", handlers={"*": seen.append},
...                   stream=StreamOptions(start=EARLIEST))
>>> reader.capture(limit=1, timeout=1.0), seen[0]["uuid"]
(1, 't1')
>>> reader.close()

A relay is subscribed once constructed (when the source answers). Two threads: one reads
the source into a bounded buffer, the other appends what is buffered in batches (one
pipelined write each). While the destination is away the buffer fills and the appends are
retried; events arriving at a full buffer are counted in ``dropped`` (never accepted). A
lost source connection is subscribed again with backoff.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from evcore import codec
from evcore._connect import resolve_transport
from evcore.errors import ConfigurationError, ConnectionLost, MessageRejected, TransportError
from evcore.event import BOOT_HEADER, SEQ_HEADER
from evcore.eventid import DEFAULT_WINDOW, EVENT_ID_HEADER, SeenWindow, event_id
from evcore.routing import events_disabled_because, exchange_type_for
from evcore.transport import (
    EVERY_PARTITION,
    TOPIC,
    Exchange,
    IncomingMessage,
    OutgoingMessage,
    QueueOptions,
    Subscription,
    Transport,
    partition_for,
)

__all__ = ["Relay", "RelayStats"]

logger = logging.getLogger(__name__)

#: Longest hostname header forwarded; anything longer is cut (publishers are not trusted).
MAX_HOSTNAME = 255

#: evcore senders whose sequence numbers are followed at once; the least recently heard is
#: forgotten.
MAX_TRACKED_SENDERS = 10_000


@dataclass
class RelayStats:
    """What a relay did with what it received (events unless said otherwise).

    Every event accepted is, at any moment, in exactly one of ``forwarded``, ``refused`` or
    ``buffered``; ``received`` = accepted + ``dropped`` + ``duplicates``.
    """

    #: Messages read from the source (a Celery batch counts once).
    messages: int = 0
    #: Events decoded from those messages.
    received: int = 0
    #: Events appended to the destination and confirmed by it.
    forwarded: int = 0
    #: Events that arrived while the buffer was full: never accepted, not forwarded.
    dropped: int = 0
    #: Events this relay had already received (a sender's resend) and did not append again.
    duplicates: int = 0
    #: Messages or batch elements that could not be decoded into an event, by reason.
    unparseable: Counter[str] = field(default_factory=Counter)
    #: Events the destination refused for good (a configuration error there), logged.
    refused: int = 0
    #: Events accepted and waiting to be appended.
    buffered: int = 0
    #: Appends that failed because the destination was unreachable (then retried).
    append_failures: int = 0
    #: Times the source subscription was made again after its connection was lost.
    source_reconnects: int = 0
    #: Events known lost on the way to the relay, from the sequence headers of evcore's
    #: own senders (Celery's carry none: their losses cannot be seen).
    lost: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters as plain values (``unparseable`` as a total and by reason)."""
        return {
            "messages": self.messages,
            "received": self.received,
            "forwarded": self.forwarded,
            "dropped": self.dropped,
            "duplicates": self.duplicates,
            "unparseable": sum(self.unparseable.values()),
            "unparseable_by_reason": dict(self.unparseable),
            "refused": self.refused,
            "buffered": self.buffered,
            "append_failures": self.append_failures,
            "source_reconnects": self.source_reconnects,
            "lost": self.lost,
        }


class Relay:
    """Append what a pub/sub source carries to a durable destination (module docs).

    ``max_buffer`` and ``max_buffer_bytes``: events, and bytes of message bodies, held
    while the destination is slow or away. ``batch_size``: most messages per append (one
    pipelined write). ``window``: event keys remembered to drop a sender's own resends.
    ``accept``: content types decoded (JSON only by default; never pickle). ``queue``: on a
    source that keeps queues (``amqp://``), read from this named durable queue, which the
    broker keeps (up to ``queue_max_length`` messages) while the relay is away, instead of
    a private one that goes with the relay.
    """

    def __init__(
        self,
        source: Transport | str,
        destination: Transport | str,
        *,
        exchange: str = "celeryev",
        routing_key: str = "#",
        max_buffer: int = 100_000,
        max_buffer_bytes: int = 256 * 1024 * 1024,
        batch_size: int = 1_000,
        window: int = DEFAULT_WINDOW,
        accept: Iterable[str] = ("application/json",),
        max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES,
        reconnect_delay: tuple[float, float] = (0.1, 5.0),
        queue: str | None = None,
        queue_max_length: int = 1_000_000,
    ) -> None:
        if min(max_buffer, max_buffer_bytes, batch_size) < 1:
            raise ConfigurationError("max_buffer, max_buffer_bytes and batch_size must be positive")
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._subscription: Subscription | None = None
        self._owns_source = False
        #: (message to append, events it carries), in arrival order.
        self._buffer: deque[tuple[OutgoingMessage, int]] = deque()
        self._changed = threading.Condition()
        self.destination, self._owns_destination = resolve_transport(destination)
        if not self.destination.capabilities.durable:
            if self._owns_destination:
                self.destination.close()
            raise ConfigurationError(
                f"the relay's destination must be durable; {self.destination.driver_type!r} "
                "keeps no messages (use a stream transport such as redis+streams://)"
            )
        try:
            self.source, self._owns_source = resolve_transport(source)
        except BaseException:
            if self._owns_destination:
                self.destination.close()
            raise
        reason = events_disabled_because(self.source)
        if queue is not None and "durable" not in self.source.capabilities.queue_options:
            reason = (
                f"a named queue needs a source that keeps queues; {self.source.driver_type!r} "
                "keeps nothing for an absent subscriber"
            )
        if reason:
            if self._owns_source:
                self.source.close()
            if self._owns_destination:
                self.destination.close()
            raise ConfigurationError(f"cannot relay from this source: {reason}")
        self.source_exchange = Exchange(exchange, exchange_type_for(self.source) or TOPIC)
        self.destination_exchange = Exchange(
            exchange, exchange_type_for(self.destination) or TOPIC
        )
        self.routing_key = routing_key
        self.queue = (
            QueueOptions(
                name=f"evcore-relay.{uuid.uuid4().hex}",
                exclusive=True,
                auto_delete=True,
                message_ttl=None,
            )
            if queue is None
            else QueueOptions(
                name=queue,
                exclusive=False,
                auto_delete=False,
                durable=True,
                message_ttl=None,
                expires=None,
                max_length=queue_max_length,
            )
        )
        self.partitions = self.destination.capabilities.partitions
        self.max_buffer = max_buffer
        self.max_buffer_bytes = max_buffer_bytes
        #: Bytes of the message bodies in the buffer.
        self.buffered_bytes = 0
        self.batch_size = batch_size
        self.accept = codec.accepted_content_types(accept)
        self.max_message_bytes = max_message_bytes
        self.reconnect_delay = reconnect_delay
        self.stats = RelayStats()
        self._window = SeenWindow(window)
        #: Next sequence number expected per evcore sender (most recently heard last).
        self._expected_seq: dict[str, int] = {}
        #: Appends failed in a row (the backoff grows with it).
        self._failures = 0
        #: Set while the source subscription exists (for callers waiting to publish).
        self.subscribed = threading.Event()
        #: Why the source reader stopped on its own (then the relay stops), or None.
        self.error: Exception | None = None
        try:
            self._subscription = self.source.subscribe(
                self.source_exchange, self.routing_key, self.queue
            )
            self.subscribed.set()
        except ConnectionLost as exc:
            logger.warning("relay cannot subscribe yet, will retry: %s", exc)
        except BaseException:
            if self._owns_source:
                self.source.close()
            if self._owns_destination:
                self.destination.close()
            raise

    # -- reading the source ---------------------------------------------------------------

    def _subscribe(self) -> Subscription:
        first, cap = self.reconnect_delay
        attempt = 0
        while True:
            try:
                subscription = self.source.subscribe(
                    self.source_exchange, self.routing_key, self.queue
                )
            except ConnectionLost as exc:
                delay = min(cap, first * 2**attempt) * random.uniform(0.5, 1.0)
                attempt += 1
                logger.warning("relay cannot subscribe (%s); retry in %.2fs", exc, delay)
                if self._stop.wait(delay):
                    raise
                continue
            self._subscription = subscription
            self.subscribed.set()
            return subscription

    def _read_source(self) -> None:
        try:
            self._read_until_stopped()
        except Exception as exc:
            # Not a lost connection (those are retried): a refusal such as a queue that
            # cannot be declared. The relay stops rather than run without a source.
            logger.exception("relay stopped reading the source")
            self.error = exc
            self.stop()
        finally:
            self._drop_subscription()

    def _read_until_stopped(self) -> None:
        subscription = self._subscription
        reconnecting = False
        while not self._stop.is_set():
            try:
                if subscription is None:
                    subscription = self._subscribe()
                    if reconnecting:
                        self.stats.source_reconnects += 1
                        reconnecting = False
                messages = subscription.receive(0.2)
            except ConnectionLost as exc:
                if self._stop.is_set():
                    break
                logger.warning("relay lost the source: %s", exc)
                self.subscribed.clear()
                self._drop_subscription()
                subscription = None
                reconnecting = True
                continue
            if messages:
                self._accept(messages)

    def _drop_subscription(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                subscription.close()
            except TransportError as exc:
                logger.debug("closing the source subscription failed: %s", exc)

    def _accept(self, messages: Iterable[IncomingMessage]) -> None:
        """Turn source messages into appends and buffer them, or count them dropped."""
        stats = self.stats
        outgoing: list[tuple[OutgoingMessage, int]] = []
        for message in messages:
            stats.messages += 1
            outgoing.extend(self._appends_for(message))
        if not outgoing:
            return
        with self._changed:
            buffer = self._buffer
            for item in outgoing:
                size = len(item[0].body)
                if (
                    stats.buffered + item[1] > self.max_buffer
                    or self.buffered_bytes + size > self.max_buffer_bytes
                ):
                    stats.dropped += item[1]
                    continue
                buffer.append(item)
                stats.buffered += item[1]
                self.buffered_bytes += size
            self._changed.notify_all()

    def _appends_for(self, message: IncomingMessage) -> list[tuple[OutgoingMessage, int]]:
        """The appends a source message becomes: one per partition its events go to, each
        carrying their keys; the original bytes when all its events go to one partition."""
        stats = self.stats
        if message.rejected is not None:
            stats.unparseable[message.rejected] += 1
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
            stats.unparseable[exc.reason] += 1
            logger.warning("relay skipped a message on %r: %s", message.routing_key, exc)
            return []
        if body.__class__ is dict:
            self._count_gap(message.headers, 1)
            return self._append_event(message, body)
        if body.__class__ is not list:
            stats.unparseable["not-an-event"] += 1
            return []
        self._count_gap(message.headers, len(body))
        return self._append_batch_of(message, body)

    def _count_gap(self, headers: Mapping[str, Any], count: int) -> None:
        """Count events an evcore sender numbered that never reached the relay."""
        boot, seq = headers.get(BOOT_HEADER), headers.get(SEQ_HEADER)
        if boot.__class__ is not str or seq.__class__ is not int:
            return
        expected = self._expected_seq.pop(boot, None)
        if expected is not None and seq > expected:
            self.stats.lost += seq - expected
        self._expected_seq[boot] = max(seq + count, expected or 0)
        if len(self._expected_seq) > MAX_TRACKED_SENDERS:
            del self._expected_seq[next(iter(self._expected_seq))]

    def _headers(self, message: IncomingMessage, keys: list[str]) -> dict[str, Any]:
        """What an append carries: the source's hostname header (bounded) and the keys."""
        hostname = message.headers.get("hostname")
        if hostname.__class__ is str:
            return {"hostname": hostname[:MAX_HOSTNAME], EVENT_ID_HEADER: keys}
        return {EVENT_ID_HEADER: keys}

    def _append_event(
        self, message: IncomingMessage, event: dict[str, Any]
    ) -> list[tuple[OutgoingMessage, int]]:
        """One event, the common case: appended with the message's own bytes."""
        stats = self.stats
        if event.get("type").__class__ is not str:
            stats.unparseable["not-an-event"] += 1
            return []
        stats.received += 1
        key = event_id(event)
        if self._window.seen(key):
            stats.duplicates += 1
            return []
        outgoing = OutgoingMessage(
            message.routing_key,
            message.body,
            self._headers(message, [key]),
            message.content_type or codec.JSON,
            message.content_encoding or "utf-8",
            partition=self._partition_of(event),
        )
        return [(outgoing, 1)]

    def _append_batch_of(
        self, message: IncomingMessage, items: list[Any]
    ) -> list[tuple[OutgoingMessage, int]]:
        """A batch (``task.multi``): one append per partition its events go to, the
        message's own bytes when they all go to one."""
        stats = self.stats
        events = []
        for item in items:
            if item.__class__ is dict and item.get("type").__class__ is str:
                events.append(item)
            else:
                stats.unparseable["not-an-event"] += 1
        stats.received += len(events)
        by_partition: dict[int, tuple[list[dict[str, Any]], list[str]]] = {}
        window = self._window
        for event in events:
            key = event_id(event)
            if window.seen(key):
                stats.duplicates += 1
                continue
            group, keys = by_partition.setdefault(self._partition_of(event), ([], []))
            group.append(event)
            keys.append(key)
        whole = len(by_partition) == 1 and len(events) == len(items)
        out = []
        for partition, (group, keys) in by_partition.items():
            if whole:
                raw = message.body
                content_type = message.content_type or codec.JSON
                encoding = message.content_encoding or "utf-8"
            else:
                raw, content_type, encoding = codec.dumps(group), codec.JSON, "utf-8"
            outgoing = OutgoingMessage(
                message.routing_key,
                raw,
                self._headers(message, keys),
                content_type,
                encoding,
                partition=partition,
            )
            out.append((outgoing, len(group)))
        return out

    def _partition_of(self, event: Mapping[str, Any]) -> int:
        task_id = event.get("uuid")
        if isinstance(task_id, str):
            return partition_for(task_id, self.partitions)
        return EVERY_PARTITION

    # -- appending ------------------------------------------------------------------------

    def _append_batch(self, drain_until: float | None) -> bool:
        """Append up to ``batch_size`` buffered messages in one write. After a failure,
        wait (backing off) and leave them buffered for the next call. False when there
        was nothing to append, or the relay is stopping and the drain deadline passed."""
        with self._changed:
            batch = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
        if not batch:
            return False
        events = sum(count for _, count in batch)
        refused = False
        try:
            self.destination.publish(self.destination_exchange, [m for m, _ in batch])
        except ConnectionLost as exc:
            self.stats.append_failures += 1
            first, cap = self.reconnect_delay
            delay = min(cap, first * 2**self._failures) * random.uniform(0.5, 1.0)
            self._failures += 1
            logger.warning("relay cannot append (%s); retry in %.2fs", exc, delay)
            if drain_until is None:
                return not self._stop.wait(delay)
            if time.monotonic() + delay > drain_until:
                return False
            time.sleep(delay)
            return True
        except TransportError as exc:
            refused = True
            logger.error("the destination refused %d event(s), not retrying: %s", events, exc)
        self._failures = 0
        with self._changed:
            for _ in batch:
                self._buffer.popleft()
            self.stats.buffered -= events
            self.buffered_bytes -= sum(len(message.body) for message, _ in batch)
            if refused:
                self.stats.refused += events
            else:
                self.stats.forwarded += events
        return True

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading the source in a thread of its own (``run`` does it too)."""
        if self._reader is None:
            self._reader = threading.Thread(
                target=self._read_source, name="evcore-relay-source", daemon=True
            )
            self._reader.start()

    def run(
        self,
        duration: float | None = None,
        stats_interval: float | None = None,
        on_stats: Callable[[RelayStats], Any] | None = None,
    ) -> None:
        """Append what the source delivers until :meth:`stop` or for ``duration`` seconds,
        calling ``on_stats`` every ``stats_interval`` seconds. The source keeps being read
        into the buffer after a ``duration`` ends; :meth:`close` appends what is left."""
        self.start()
        end = None if duration is None else time.monotonic() + duration
        next_report = None if stats_interval is None else time.monotonic() + stats_interval
        while not self._stop.is_set():
            now = time.monotonic()
            if end is not None and now >= end:
                break
            if next_report is not None and now >= next_report and on_stats is not None:
                on_stats(self.stats)
                next_report = now + (stats_interval or 0.0)
            if not self._append_batch(None):
                with self._changed:
                    if not self._buffer and not self._stop.is_set():
                        self._changed.wait(0.1)

    def stop(self) -> None:
        """Ask :meth:`run` to return (from any thread or a signal handler)."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def close(self, drain_timeout: float = 10.0) -> None:
        """Stop reading the source, append what is still buffered (for at most
        ``drain_timeout`` seconds), and close the transports opened from URLs."""
        self.stop()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5.0)
        self._drop_subscription()
        until = time.monotonic() + drain_timeout
        while self._buffer and time.monotonic() < until and self._append_batch(until):
            pass
        if self._buffer:
            logger.error(
                "relay closed with %d event(s) not appended (destination unreachable)",
                self.stats.buffered,
            )
        if self._owns_source:
            self.source.close()
        if self._owns_destination:
            self.destination.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
