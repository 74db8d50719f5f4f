"""Live events for browsers: a fan-out of applied events to server-sent-event clients.

Each client has a buffer of its own, bounded: a slow or hidden tab that stops reading
loses its oldest events (counted, and told so) instead of making the server buffer
without bound. Everything runs on the event loop that applies the events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any

from evcore import codec

#: Events kept for one client that does not read.
DEFAULT_BUFFER = 1000
#: Clients streaming at once; more are refused (503).
DEFAULT_MAX_CLIENTS = 100
#: Seconds between keep-alive comments on an idle stream.
KEEP_ALIVE = 15.0
#: Event groups a client may ask for; the SSE event name is one of these, never a type
#: string from the event itself (which a publisher controls).
GROUPS = frozenset({"task", "worker", "other"})


def group_of(event: Mapping[str, Any]) -> str:
    """``task``, ``worker`` or ``other``, from the event's type."""
    type_ = event.get("type")
    if type_.__class__ is str:
        group = type_.partition("-")[0]
        if group in ("task", "worker"):
            return group
    return "other"


class Subscriber:
    """One client's bounded buffer of events."""

    def __init__(self, groups: frozenset[str], buffer: int) -> None:
        self.groups = groups
        self.events: deque[Mapping[str, Any]] = deque(maxlen=buffer)
        #: Events dropped from the buffer since the client last read.
        self.dropped = 0
        self.dropped_total = 0
        self.closed = False
        self._ready = asyncio.Event()

    def offer(self, event: Mapping[str, Any], group: str) -> None:
        if group not in self.groups:
            return
        events = self.events
        if len(events) == events.maxlen:
            self.dropped += 1
            self.dropped_total += 1
        events.append(event)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def take(self, timeout: float) -> tuple[list[Mapping[str, Any]], int]:
        """Wait up to ``timeout`` seconds for events; the events and how many were dropped
        before them."""
        if not self.events and not self.closed:
            self._ready.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        taken = list(self.events)
        self.events.clear()
        dropped, self.dropped = self.dropped, 0
        return taken, dropped


class EventStream:
    """The clients streaming now; :meth:`publish` is called for every applied event."""

    def __init__(
        self, buffer: int = DEFAULT_BUFFER, max_clients: int = DEFAULT_MAX_CLIENTS
    ) -> None:
        self.buffer = buffer
        self.max_clients = max_clients
        self.subscribers: set[Subscriber] = set()
        #: Events dropped for slow clients, in all.
        self.dropped = 0
        self.refused = 0
        self.closed = False

    @property
    def dropped_total(self) -> int:
        """Events dropped for slow clients, past and present."""
        return self.dropped + sum(sub.dropped_total for sub in self.subscribers)

    def publish(self, event: Mapping[str, Any]) -> None:
        if not self.subscribers:
            return
        group = group_of(event)
        for subscriber in self.subscribers:
            subscriber.offer(event, group)

    def subscribe(self, groups: frozenset[str]) -> Subscriber | None:
        """A new client's buffer, or None when too many clients stream already."""
        if self.closed or len(self.subscribers) >= self.max_clients:
            self.refused += 1
            return None
        subscriber = Subscriber(groups, self.buffer)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        self.dropped += subscriber.dropped_total

    def close(self) -> None:
        """End every stream (at shutdown, so open streams do not hold it up)."""
        self.closed = True
        for subscriber in list(self.subscribers):
            subscriber.close()

    async def frames(
        self, subscriber: Subscriber, keep_alive: float = KEEP_ALIVE
    ) -> AsyncIterator[bytes]:
        """The client's server-sent-event frames until the stream is closed."""
        try:
            yield b"retry: 2000\n\n"
            while not subscriber.closed:
                events, dropped = await subscriber.take(keep_alive)
                if dropped:
                    yield b"event: dropped\ndata: " + codec.dumps({"count": dropped}) + b"\n\n"
                if not events and not dropped:
                    yield b": keep-alive\n\n"
                    continue
                # One frame per event; the JSON text holds no newline, so it cannot end
                # the frame early whatever the event's strings contain.
                yield b"".join(
                    b"event: "
                    + group_of(event).encode()
                    + b"\ndata: "
                    + codec.dumps(event)
                    + b"\n\n"
                    for event in events
                )
        finally:
            self.unsubscribe(subscriber)
