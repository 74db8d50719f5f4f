"""Publish events: Celery's ``EventDispatcher`` over any evcore transport."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from evcore import codec
from evcore._connect import resolve_transport
from evcore.buffer import DropPolicy, OfflineBuffer
from evcore.clock import LamportClock, default_clock
from evcore.errors import ConnectionLost
from evcore.event import group_from, multi_routing_key, routing_key_for
from evcore.nodename import anon_nodename, utcoffset
from evcore.registry import connect
from evcore.routing import rule_for
from evcore.transport import Exchange, OutgoingMessage, Transport

logger = logging.getLogger(__name__)

#: Fields every dispatcher stamps itself; passing one to ``send()`` is a TypeError.
RESERVED_FIELDS = frozenset({"hostname", "clock", "pid"})

#: Retry policy used when ``retry=True`` is given without one (kombu's key names).
DEFAULT_RETRY_POLICY: Mapping[str, float] = {
    "max_retries": 3,
    "interval_start": 0.0,
    "interval_step": 0.2,
    "interval_max": 1.0,
}


@dataclass
class DispatcherStats:
    """Counters of what a Dispatcher did with the events it was given."""

    #: Events handed to the transport successfully (a batch counts each of its events).
    events_sent: int = 0
    #: Messages handed to the transport successfully (a batch counts once).
    messages_sent: int = 0
    #: Publishes that failed with a connection error and went to the offline buffer.
    publish_failures: int = 0


class Dispatcher:
    """Send events to an exchange, as Celery's ``EventDispatcher`` does.

    >>> from evcore import Dispatcher
    >>> with Dispatcher("memory://docs-dispatcher", hostname="w1@example") as dispatcher:
    ...     event = dispatcher.send("worker-online", freq=2.0)
    >>> event["type"], event["hostname"], event["clock"] > 0
    ('worker-online', 'w1@example', True)
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
    ) -> None:
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
        self.on_enabled: set[Callable[[], None]] = set()
        self.on_disabled: set[Callable[[], None]] = set()
        self.stats = DispatcherStats()
        self.offline_buffer = OfflineBuffer(
            offline_buffer_limit, offline_buffer_bytes, offline_drop_policy
        )

        rule = rule_for(self.transport.driver_type)
        self.exchange = Exchange(exchange, rule.exchange_type)
        #: Why this dispatcher can never send, or ``None``.
        self.disabled_reason = rule.disabled_because
        self.mutex = threading.RLock()
        self._group_buffer: dict[str, list[bytes]] = {}
        self._closed = False
        self.enabled = False
        if self.disabled_reason:
            logger.warning("evcore dispatcher disabled: %s", self.disabled_reason)
        elif enabled:
            self.enable()

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
        for callback in list(self.on_enabled):
            callback()

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
        group = group_from(type)
        if self.groups and group not in self.groups:
            return None
        if group in self.buffer_group:
            event = self._build(type, fields, False, utcoffset)
            body = codec.dumps(event)
            with self.mutex:
                if self._closed:
                    return None
                pending = self._group_buffer.setdefault(group, [])
                pending.append(body)
                full = len(pending) >= self.buffer_limit
            if full:
                self.flush(errors=False)
            elif self.on_send_buffered is not None:
                self.on_send_buffered()
            return event
        event = self._build(type, fields, blind, utcoffset)
        message = OutgoingMessage(
            routing_key_for(type),
            codec.dumps(event),
            self.headers,
            self.content_type,
            "utf-8",
            self.delivery_mode,
        )
        with self.mutex:
            if self._closed:
                return None
            self._publish(message, 1, retry, retry_policy)
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
        event = self._build(type, dict(fields), blind, utcoffset)
        message = OutgoingMessage(
            routing_key_for(type),
            codec.dumps(event),
            self.headers,
            self.content_type,
            "utf-8",
            self.delivery_mode,
        )
        with self.mutex:
            self._publish(message, 1, retry, retry_policy)
        return event

    def _build(
        self,
        type: str,
        fields: dict[str, Any],
        blind: bool,
        offset: Callable[[], float],
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
        if "timestamp" not in event:
            event["timestamp"] = time.time()
        else:
            event["timestamp"] = event.pop("timestamp")
        event["type"] = type
        return event

    def _publish(
        self,
        message: OutgoingMessage,
        events: int,
        retry: bool = False,
        retry_policy: Mapping[str, float] | None = None,
    ) -> bool:
        """Publish under the mutex, after anything still in the offline buffer, so order
        holds; buffer on a connection error. True if it went out."""
        if self.offline_buffer and not self._drain_offline():
            return self._buffer(message, events, ConnectionLost("earlier events still buffered"))
        policy = {**DEFAULT_RETRY_POLICY, **(retry_policy or {})}
        attempts = 0
        while True:
            try:
                self.transport.publish(self.exchange, (message,))
            except ConnectionLost as exc:
                self.stats.publish_failures += 1
                if retry and attempts < policy["max_retries"]:
                    delay = policy["interval_start"] + attempts * policy["interval_step"]
                    time.sleep(min(delay, policy["interval_max"]))
                    attempts += 1
                    continue
                return self._buffer(message, events, exc)
            self.stats.messages_sent += 1
            self.stats.events_sent += events
            return True

    def _buffer(self, message: OutgoingMessage, events: int, exc: ConnectionLost) -> bool:
        if not self.buffer_while_offline:
            raise exc
        logger.debug("publish failed, buffering %d event(s): %s", events, exc)
        self.offline_buffer.append(message, events)
        return False

    def _drain_offline(self) -> bool:
        """Publish the offline buffer in order, each message at most once; stop at the
        first failure and keep the rest. True when the buffer was emptied."""
        pending = self.offline_buffer.take_all()
        for index, (message, events) in enumerate(pending):
            try:
                self.transport.publish(self.exchange, (message,))
            except ConnectionLost:
                self.stats.publish_failures += 1
                self.offline_buffer.put_back(pending[index:])
                return False
            self.stats.messages_sent += 1
            self.stats.events_sent += events
        return True

    # -- buffers --------------------------------------------------------------------------

    def flush(self, errors: bool = True, groups: bool = True) -> None:
        """Publish what is buffered: the offline buffer (``errors``) and the pending
        batches (``groups``). Each buffered message is tried at most once per call; what
        still cannot be sent stays buffered, in order."""
        with self.mutex:
            if self._closed:
                return
            if errors and self.offline_buffer:
                self._drain_offline()
            if groups:
                self._flush_groups()

    def _flush_groups(self) -> None:
        for group, bodies in self._group_buffer.items():
            if not bodies:
                continue
            count = len(bodies)
            message = OutgoingMessage(
                multi_routing_key(group),
                b"[" + b",".join(bodies) + b"]",
                self.headers,
                self.content_type,
                "utf-8",
                self.delivery_mode,
            )
            del bodies[:count]
            self._publish(message, count)

    def extend_buffer(self, other: Dispatcher) -> None:
        """Take over another dispatcher's offline buffer (used when reconnecting)."""
        with other.mutex:
            items = other.offline_buffer.take_all()
        with self.mutex:
            self.offline_buffer.extend(items)

    @property
    def pending_events(self) -> int:
        """Events accepted but not yet published: batched plus offline-buffered."""
        with self.mutex:
            batched = sum(len(bodies) for bodies in self._group_buffer.values())
            return batched + self.offline_buffer.events

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Try once to publish what is buffered, then stop sending.

        What could not be delivered stays buffered, so ``enable()`` and ``flush()`` can
        still deliver it. A transport opened from a URL is closed too.
        """
        with self.mutex:
            if self._closed:
                return
            self._flush_groups()
            if self.offline_buffer:
                self._drain_offline()
            self._closed = True
            if self._owns_transport:
                self._transport_closed = True
                self.transport.close()

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
