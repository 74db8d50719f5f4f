"""Publish events: Celery's ``EventDispatcher`` over any evcore transport."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from evcore import _live, codec
from evcore._connect import resolve_transport
from evcore.buffer import DropPolicy, OfflineBuffer
from evcore.clock import LamportClock, default_clock
from evcore.errors import ConfigurationError, ConnectionLost, TransportError
from evcore.event import (
    BOOT_HEADER,
    SEQ_HEADER,
    group_from,
    multi_routing_key,
    routing_key_for,
)
from evcore.nodename import anon_nodename, utcoffset
from evcore.registry import connect
from evcore.routing import events_disabled_because, exchange_type_for
from evcore.transport import (
    EVERY_PARTITION,
    TOPIC,
    Exchange,
    OutgoingMessage,
    Transport,
    partition_for,
)
from evcore.writer import BackgroundWriter, Item

logger = logging.getLogger(__name__)

#: Fields every dispatcher stamps itself; passing one to ``send()`` is a TypeError.
RESERVED_FIELDS = frozenset({"hostname", "clock", "pid"})

#: Event types whose group and routing key a dispatcher remembers.
MAX_ROUTES = 1024

#: Retry policy used when ``retry=True`` is given without one (kombu's key names).
DEFAULT_RETRY_POLICY: Mapping[str, float] = {
    "max_retries": 3,
    "interval_start": 0.0,
    "interval_step": 0.2,
    "interval_max": 1.0,
}


@dataclass
class DispatcherStats:
    """Counters of what a Dispatcher did with the events it accepted."""

    #: Events handed to the transport successfully (a batch counts each of its events).
    events_sent: int = 0
    #: Messages handed to the transport successfully (a batch counts once).
    messages_sent: int = 0
    #: Publish attempts that failed with a connection error.
    publish_failures: int = 0
    #: Events the broker refused for good (a channel error); logged, not retried.
    events_refused: int = 0
    #: Events larger than the transport's ``max_body_size``, refused before publishing
    #: (logged; ``send()`` returned ``None`` for them).
    events_too_large: int = 0


class Dispatcher:
    """Send events to an exchange, as Celery's ``EventDispatcher`` does.

    >>> from evcore import Dispatcher
    >>> with Dispatcher("memory://docs-dispatcher", hostname="w1@example") as dispatcher:
    ...     event = dispatcher.send("worker-online", freq=2.0)
    >>> event["type"], event["hostname"], event["clock"] > 0
    ('worker-online', 'w1@example', True)

    With ``background=True`` a writer thread publishes what ``send()`` queued, coalescing
    many events into one round trip; ``flush()`` and ``close()`` still deliver everything
    accepted. ``close()`` ends the thread and ``enable()`` starts a new one. A send with
    ``retry=True`` bypasses the writer: it waits for what is queued, then publishes and
    retries in the caller's thread. The writer cannot raise a failed publish to the caller,
    so ``background=True`` with ``buffer_while_offline=False`` is refused.
    """

    def __init__(
        self,
        transport_or_url: Transport | str = "memory://",
        hostname: str | None = None,
        groups: Iterable[str] | None = None,
        enabled: bool = True,
        buffer_while_offline: bool = True,
        buffer_group: Iterable[str] | None = None,
        buffer_limit: int = 24,
        on_send_buffered: Callable[[], None] | None = None,
        serializer: str = "json",
        delivery_mode: int = 1,
        exchange: str = "celeryev",
        clock: LamportClock | None = None,
        offline_buffer_limit: int = 10_000,
        offline_buffer_bytes: int = 64 * 1024 * 1024,
        offline_drop_policy: DropPolicy = "drop-oldest",
        background: bool = False,
        max_pending: int = 10_000,
        linger: float = 0.0005,
    ) -> None:
        if background and not buffer_while_offline:
            raise ConfigurationError(
                "background=True cannot honour buffer_while_offline=False: the writer thread "
                "publishes after send() has returned, so a failed publish cannot be raised to "
                "the caller; use background=False to have send() raise ConnectionLost"
            )
        self.transport, self._owns_transport = resolve_transport(transport_or_url)
        self._url = transport_or_url if isinstance(transport_or_url, str) else None
        self._transport_closed = False
        self.hostname = hostname or anon_nodename()
        self.groups = set(groups or ())
        self.buffer_while_offline = buffer_while_offline
        self.buffer_group = frozenset(buffer_group or ())
        self.buffer_limit = buffer_limit
        self.on_send_buffered = on_send_buffered
        self.content_type = codec.content_type_for(serializer)
        self.serializer = serializer
        self.delivery_mode = delivery_mode
        self.clock = clock if clock is not None else default_clock
        self.pid = os.getpid()
        self.headers = {"hostname": self.hostname}
        #: Identifies this dispatcher's sequence of events (see ``SEQ_HEADER``).
        self.boot_id = uuid.uuid4().hex
        #: Next sequence number per lane: one lane (``None``) on pub/sub transports, one
        #: per partition (and one for ``EVERY_PARTITION``) on a durable transport.
        self._next_seq: dict[int | None, int] = {}
        capabilities = self.transport.capabilities
        #: Partitions of a durable transport's streams (0: not durable, no partitioning).
        self.partitions = capabilities.partitions if capabilities.durable else 0
        self.on_enabled: set[Callable[[], None]] = set()
        self.on_disabled: set[Callable[[], None]] = set()
        self.stats = DispatcherStats()
        self.offline_buffer = OfflineBuffer(
            offline_buffer_limit, offline_buffer_bytes, offline_drop_policy
        )

        #: The largest body the transport carries in one message (None: no limit).
        self.max_body_size = self.transport.capabilities.max_body_size
        #: Why this dispatcher can never send, or ``None``.
        self.disabled_reason = events_disabled_because(self.transport)
        self.exchange = Exchange(exchange, exchange_type_for(self.transport) or TOPIC)
        #: Guards the clock, the sequence numbers and the batches: the order of events.
        self.mutex = threading.RLock()
        #: Guards the transport, the offline buffer and the counters. Taken after ``mutex``
        #: when both are held; the background writer takes only this one.
        self._publish_lock = threading.RLock()
        self._group_buffer: dict[tuple[str, int | None], list[bytes]] = {}
        self._routes: dict[str, tuple[str, str]] = {}
        self._closed = False
        self.enabled = False
        self.background = background and not self.disabled_reason
        self._max_pending = max_pending
        self._linger = linger
        self._writer: BackgroundWriter | None = None
        self._start_writer()
        if self.disabled_reason:
            logger.warning("evcore dispatcher disabled: %s", self.disabled_reason)
        elif enabled:
            self.enable()
        _live.track(self)

    # -- switching on and off -------------------------------------------------------------

    def enable(self) -> None:
        """Start sending; runs the ``on_enabled`` callbacks. No effect where events are
        disabled by the transport's driver type."""
        if self.disabled_reason:
            return
        with self.mutex:
            if self._transport_closed and self._url is not None:
                self.transport = connect(self._url)
                self._transport_closed = False
            self._closed = False
            self.enabled = True
            self._start_writer()
        for callback in list(self.on_enabled):
            callback()

    def _start_writer(self) -> None:
        if self.background and self._writer is None:
            self._writer = BackgroundWriter(
                self._publish_many, max_pending=self._max_pending, linger=self._linger
            )

    def disable(self) -> None:
        """Stop sending and close; runs the ``on_disabled`` callbacks. Buffers are kept."""
        if self.enabled:
            self.enabled = False
            self.close()
            for callback in list(self.on_disabled):
                callback()

    # -- sending --------------------------------------------------------------------------

    def send(
        self,
        type: str,
        blind: bool = False,
        utcoffset: Callable[[], float] = utcoffset,
        retry: bool = False,
        retry_policy: Mapping[str, float] | None = None,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Send an event of ``type`` with ``fields``; return the event, or ``None`` if it
        was not sent (disabled, closed or filtered out by ``groups``).

        Events of a group in ``buffer_group`` are batched and published ``buffer_limit`` at
        a time under ``<group>.multi``. ``blind`` events carry clock 0 instead of advancing
        the clock (never ``null``, which crashes Celery's receivers).
        """
        if not self.enabled:
            return None
        group, routing_key = self._routes.get(type) or self._route(type)
        if self.groups and group not in self.groups:
            return None
        lane = self._lane(fields) if self.partitions else None
        if group in self.buffer_group:
            return self._send_batched(group, type, fields, utcoffset, lane)
        with self.mutex:
            if self._closed:
                return None
            event = self._build(type, fields, blind, utcoffset)
            body = codec.dumps(event)
            if self._too_large(type, len(body)):
                return None
            self._submit(routing_key, body, 1, retry, retry_policy, lane)
        return event

    def _lane(self, fields: Mapping[str, Any]) -> int:
        """The partition of an event on a durable transport: its task's, by uuid, so all
        events of a task stay in order in one partition; every partition for events
        without a uuid (worker events), since every monitor needs them."""
        task_id = fields.get("uuid")
        if task_id.__class__ is str:
            return partition_for(task_id, self.partitions)
        return EVERY_PARTITION

    def _too_large(self, type: str, size: int) -> bool:
        """Count and log an event the transport cannot carry in one message."""
        limit = self.max_body_size
        if limit is None or size <= limit:
            return False
        self.stats.events_too_large += 1
        logger.error(
            "refused a %r event of %d bytes: the transport carries at most %d per message",
            type,
            size,
            limit,
        )
        return True

    def _route(self, type: str) -> tuple[str, str]:
        """The group and routing key of an event type (remembered for the next send)."""
        route = group_from(type), routing_key_for(type)
        if len(self._routes) < MAX_ROUTES:
            self._routes[type] = route
        return route

    def _send_batched(
        self,
        group: str,
        type: str,
        fields: dict[str, Any],
        offset: Callable[[], float],
        lane: int | None,
    ) -> dict[str, Any] | None:
        with self.mutex:
            if self._closed:
                return None
            event = self._build(type, fields, False, offset)
            body = codec.dumps(event)
            if self._too_large(type, len(body) + 2):  # alone in a batch: [body]
                return None
            pending = self._group_buffer.setdefault((group, lane), [])
            pending.append(body)
            if len(pending) >= self.buffer_limit:
                self._flush_group(group, lane, pending)
                return event
        if self.on_send_buffered is not None:
            self.on_send_buffered()
        return event

    def publish(
        self,
        type: str,
        fields: Mapping[str, Any],
        blind: bool = False,
        retry: bool = False,
        retry_policy: Mapping[str, float] | None = None,
        utcoffset: Callable[[], float] = utcoffset,
    ) -> dict[str, Any] | None:
        """Publish one event at once, never batched nor filtered by ``groups``.

        Works on a dispatcher created with ``enabled=False`` (that is how clients send
        ``task-sent``), but not where the driver type disables events.
        """
        if self.disabled_reason:
            return None
        lane = self._lane(fields) if self.partitions else None
        with self.mutex:
            event = self._build(type, dict(fields), blind, utcoffset)
            body = codec.dumps(event)
            if self._too_large(type, len(body)):
                return None
            self._submit(routing_key_for(type), body, 1, retry, retry_policy, lane)
        return event

    def _build(
        self, type: str, fields: dict[str, Any], blind: bool, offset: Callable[[], float]
    ) -> dict[str, Any]:
        clash = RESERVED_FIELDS.intersection(fields)
        if clash:
            raise TypeError(f"send() got multiple values for keyword argument {min(clash)!r}")
        event = {
            "hostname": self.hostname,
            "utcoffset": offset(),
            "pid": self.pid,
            "clock": 0 if blind else self.clock.forward(),
            **fields,
        }
        event["timestamp"] = event.pop("timestamp", None) or time.time()
        event["type"] = type
        return event

    # -- publishing (always under the mutex, so sequence order is publish order) ----------

    def _submit(
        self,
        routing_key: str,
        body: bytes,
        events: int,
        retry: bool = False,
        retry_policy: Mapping[str, float] | None = None,
        lane: int | None = None,
    ) -> None:
        next_seq = self._next_seq
        seq = next_seq.get(lane, 1)
        next_seq[lane] = seq + events
        boot = self.boot_id if lane is None else f"{self.boot_id}/{lane}"
        headers = {**self.headers, BOOT_HEADER: boot, SEQ_HEADER: seq}
        message = OutgoingMessage(
            routing_key, body, headers, self.content_type, "utf-8", self.delivery_mode, 0, lane
        )
        writer = self._writer
        if writer is not None and not retry:
            writer.submit((message, events))
            return
        if writer is not None:
            # Retrying happens in the caller's thread, after what the writer still holds.
            writer.wait_idle()
        with self._publish_lock:
            self._publish(message, events, retry, retry_policy)

    def _publish(
        self,
        message: OutgoingMessage,
        events: int,
        retry: bool = False,
        retry_policy: Mapping[str, float] | None = None,
    ) -> None:
        """Publish after anything still in the offline buffer, so order holds; with
        ``retry``, draining that buffer is retried too."""
        attempts = 0
        while True:
            try:
                if self.offline_buffer and not self._drain_offline():
                    raise ConnectionLost("earlier events still buffered")
                self._send_now([(message, events)])
                return
            except ConnectionLost as exc:
                policy = {**DEFAULT_RETRY_POLICY, **(retry_policy or {})}
                if retry and attempts < policy["max_retries"]:
                    delay = policy["interval_start"] + attempts * policy["interval_step"]
                    time.sleep(min(delay, policy["interval_max"]))
                    attempts += 1
                    continue
                self._buffer([(message, events)], exc)
                return

    def _publish_many(self, items: list[Item]) -> None:
        """The background writer's path: one transport call for the whole batch. What
        fails is buffered (nobody is left to raise it to)."""
        with self._publish_lock:
            if self.offline_buffer and not self._drain_offline():
                self.offline_buffer.extend(items)
                return
            try:
                self._send_now(items)
            except ConnectionLost as exc:
                logger.debug("publish failed, buffering %d message(s): %s", len(items), exc)
                self.offline_buffer.extend(items)

    def _send_now(self, items: list[Item]) -> None:
        """Hand messages to the transport and count them; raise ConnectionLost."""
        try:
            self.transport.publish(self.exchange, [message for message, _ in items])
        except ConnectionLost:
            self.stats.publish_failures += 1
            raise
        except TransportError as exc:
            refused = sum(events for _, events in items)
            self.stats.events_refused += refused
            logger.error("broker refused %d event(s), not retrying: %s", refused, exc)
            return
        stats = self.stats
        stats.messages_sent += len(items)
        stats.events_sent += sum([events for _, events in items])

    def _buffer(self, items: list[Item], exc: ConnectionLost) -> None:
        if not self.buffer_while_offline:
            raise exc
        logger.debug("publish failed, buffering %d message(s): %s", len(items), exc)
        self.offline_buffer.extend(items)

    def _drain_offline(self) -> bool:
        """Publish the offline buffer in order, each message at most once; stop at the
        first failure and keep the rest. True when the buffer was emptied."""
        pending = self.offline_buffer.take_all()
        for index, item in enumerate(pending):
            try:
                self._send_now([item])
            except ConnectionLost:
                self.offline_buffer.put_back(pending[index:])
                return False
        return True

    # -- buffers --------------------------------------------------------------------------

    def flush(self, errors: bool = True, groups: bool = True) -> None:
        """Publish what is buffered: pending batches (``groups``), queued background
        writes, and the offline buffer (``errors``). Each message is tried at most once
        per call; what still cannot be sent stays buffered, in order."""
        with self.mutex:
            if self._closed:
                return
            if groups:
                self._flush_groups()
        writer = self._writer
        if writer is not None:
            writer.wait_idle()
        if errors:
            with self._publish_lock:
                if self.offline_buffer:
                    self._drain_offline()

    def _flush_groups(self) -> None:
        for (group, lane), bodies in self._group_buffer.items():
            if bodies:
                self._flush_group(group, lane, bodies)

    def _flush_group(self, group: str, lane: int | None, bodies: list[bytes]) -> None:
        routing_key = multi_routing_key(group)
        for chunk in _fitting(bodies, self.max_body_size):
            self._submit(routing_key, b"[" + b",".join(chunk) + b"]", len(chunk), lane=lane)
        bodies.clear()

    def extend_buffer(self, other: Dispatcher) -> None:
        """Take over another dispatcher's offline buffer (used when reconnecting)."""
        with other._publish_lock:
            items = other.offline_buffer.take_all()
        with self._publish_lock:
            self.offline_buffer.extend(items)

    @property
    def pending_events(self) -> int:
        """Events accepted but not yet handed to the broker: batched, queued for the
        background writer, or in the offline buffer."""
        with self.mutex:
            batched = sum(len(bodies) for bodies in self._group_buffer.values())
        writer = self._writer
        queued = writer.pending if writer is not None else 0
        with self._publish_lock:
            return batched + queued + self.offline_buffer.events

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Deliver what can be delivered (once), then stop sending.

        What could not be delivered stays buffered, so ``enable()`` and ``flush()`` can
        still deliver it. The background writer's thread ends; a transport opened from a URL
        is closed too.
        """
        with self.mutex:
            if self._closed:
                return
            self._flush_groups()
            writer, self._writer = self._writer, None
            if writer is not None:
                # Under the mutex, so nothing is submitted behind the writer's back; the
                # writer takes only the publish lock, which is not held here.
                writer.stop()
            with self._publish_lock:
                if self.offline_buffer:
                    self._drain_offline()
                self._closed = True
                if self._owns_transport:
                    self._transport_closed = True
                    self.transport.close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` (or ``disable()``) ran and ``enable()`` did not since."""
        return self._closed

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"<Dispatcher {self.hostname} {self.exchange.type}:{self.exchange.name} {state}>"


#: Celery's name, so ``from celery.events import EventDispatcher`` ports by changing imports.
EventDispatcher = Dispatcher


def _fitting(bodies: list[bytes], limit: int | None) -> list[list[bytes]]:
    """Split a batch, in order, into runs whose JSON list fits in ``limit`` bytes (each
    body alone fits: larger ones were refused when sent)."""
    if limit is None or sum(map(len, bodies)) + len(bodies) + 1 <= limit:
        return [list(bodies)]
    chunks: list[list[bytes]] = []
    chunk: list[bytes] = []
    size = 1  # the opening bracket; each body adds its length and a comma or the "]"
    for body in bodies:
        if chunk and size + len(body) + 1 > limit:
            chunks.append(chunk)
            chunk, size = [], 1
        chunk.append(body)
        size += len(body) + 1
    chunks.append(chunk)
    return chunks
