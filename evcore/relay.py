"""Relay events from a pub/sub transport to a durable one, for unmodified Celery workers.

Celery workers publish over pub/sub, at most once. A relay subscribes once and appends
every event, in arrival order and unchanged, to a durable stream (task events to their
task's partition, worker events to every partition); from there on nothing is lost. The
relay numbers what it appends in sequences of its own, so monitors count what is lost
between the relay and them; what pub/sub dropped before the relay cannot be seen (Celery's
events carry no sequence).

Two relays may run side by side on one source for availability. Each forwarded event
carries an idempotency key derived from its own fields (:func:`idempotency_key`), the same
from either relay, and receivers drop the second copy.

>>> from evcore import Dispatcher, Receiver
>>> from evcore.relay import Relay
>>> from evcore.transport import StreamOptions
>>> relay = Relay("memory://docs-relay", "memory+stream://docs-relay?partitions=2")
>>> with Dispatcher("memory://docs-relay", hostname="celery@w1") as worker:
...     _ = worker.send("task-received", uuid="t1", name="add")
>>> relay.run(duration=0.1)
>>> relay.close()
>>> relay.stats.forwarded
1
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from evcore.dispatcher import IDEMPOTENCY_HEADER, Dispatcher
from evcore.receiver import Receiver
from evcore.transport import Transport

__all__ = ["Relay", "RelayStats", "idempotency_key"]

#: Messages the relay keeps, in order, while the destination is unreachable.
OFFLINE_LIMIT = 1_000_000
OFFLINE_BYTES = 512 * 1024 * 1024


def idempotency_key(event: dict[str, Any]) -> str:
    """A key for an event from what every Celery event carries: sender hostname and pid,
    type, task uuid (if any), Lamport clock and timestamp.

    Limits: two different events of one sender with the same type, uuid, clock and
    timestamp get the same key (a sender whose clock does not advance, such as blind
    events with clock 0, sending twice within the timestamp's resolution), and the second
    one is dropped; an event re-sent with a new timestamp gets a new key.
    """
    parts = (
        event.get("hostname"),
        event.get("pid"),
        event.get("type"),
        event.get("uuid"),
        event.get("clock"),
        event.get("timestamp"),
    )
    return hashlib.blake2b(repr(parts).encode(), digest_size=12).hexdigest()


@dataclass
class RelayStats:
    """What a relay did. ``received`` = ``forwarded`` + ``unparseable`` + ``pending``
    (buffered for the destination) + ``dropped`` (the offline buffer overflowed or the
    destination refused)."""

    received: int = 0
    forwarded: int = 0
    unparseable: int = 0
    dropped: int = 0
    pending: int = 0
    source_reconnects: int = 0


class _Passthrough(Receiver):
    """A Receiver that hands events on exactly as they came (no clock or time rules)."""

    def event_from_message(self, body: dict[str, Any]) -> dict[str, Any]:
        return body


class Relay:
    """Subscribe to ``source`` once; append every event to the durable ``destination``."""

    def __init__(
        self,
        source: Transport | str,
        destination: Transport | str,
        exchange: str = "celeryev",
        routing_key: str = "#",
        name: str | None = None,
    ) -> None:
        self.name = name or f"relay.{socket.gethostname()}.{os.getpid()}"
        self.dispatcher = Dispatcher(
            destination,
            hostname=self.name,
            exchange=exchange,
            background=True,
            offline_buffer_limit=OFFLINE_LIMIT,
            offline_buffer_bytes=OFFLINE_BYTES,
        )
        if not self.dispatcher.partitions:
            self.dispatcher.close()
            raise ValueError("the relay's destination must be a durable transport")
        self.receiver = _Passthrough(
            source,
            handlers={"*": self._forward},
            routing_key=routing_key,
            exchange=exchange,
            queue_prefix="evcore.relay",
        )
        self._stats = RelayStats()
        self._forward_event = self.dispatcher.forward

    def _forward(self, event: dict[str, Any]) -> None:
        self._forward_event(event, {IDEMPOTENCY_HEADER: idempotency_key(event)})

    @property
    def stats(self) -> RelayStats:
        """The counters, brought up to date."""
        stats = self._stats
        received = self.receiver.stats
        stats.unparseable = sum(received.rejected.values())
        stats.received = received.events + stats.unparseable
        stats.source_reconnects = received.reconnects
        dispatcher = self.dispatcher
        stats.forwarded = dispatcher.stats.events_sent
        stats.dropped = dispatcher.offline_buffer.dropped_events + dispatcher.stats.events_refused
        stats.pending = dispatcher.pending_events
        return stats

    def run(self, duration: float | None = None) -> None:
        """Relay until :meth:`stop` or for ``duration`` seconds."""
        end = None if duration is None else time.monotonic() + duration
        receiver = self.receiver
        while not receiver.should_stop:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            receiver.capture(timeout=1.0 if left is None else min(1.0, left))
            self.dispatcher.flush()

    def stop(self) -> None:
        """End :meth:`run` soon (from a signal handler or another thread)."""
        self.receiver.should_stop = True

    def close(self) -> None:
        """Stop reading, then deliver what is buffered (once) and close both ends."""
        self.receiver.close()
        self.dispatcher.close()
