"""Idempotency keys for events that carry no sequence header (Celery's own senders).

A relay (``evcore relay``) stamps each event it appends to a durable stream with a key
derived from what the event carries, so that a reader can drop the copies a second relay on
the same source appends. The key is a digest of the sender's hostname and pid, the event
type, the task uuid, the Lamport clock and the timestamp: two different events of one
sender process share all of these only if they carry the same clock (blind events, clock
0) in the same timestamp tick.

>>> key = event_id({"type": "task-started", "hostname": "w1@h", "pid": 7,
...                 "uuid": "t1", "clock": 12, "timestamp": 1700000000.25})
>>> key == event_id({"timestamp": 1700000000.25, "clock": 12, "uuid": "t1", "pid": 7,
...                  "hostname": "w1@h", "type": "task-started", "extra": 1})
True
>>> window = SeenWindow(limit=2)
>>> window.seen("a", 0), window.seen("a", 1), window.seen("b", 0), window.seen("c", 0)
(False, True, False, False)
>>> window.seen("a", 0)  # pushed out of the window by b and c: taken for new
False
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["DEFAULT_WINDOW", "EVENT_ID_HEADER", "SeenWindow", "event_id"]

#: Message header holding the keys of the events a message carries, one per event in body
#: order (a list of strings, also for a single event).
EVENT_ID_HEADER = "evcore-event-ids"

#: Event keys a reader remembers by default: a second relay's copy is recognised as long as
#: fewer than this many other events arrived in between.
DEFAULT_WINDOW = 100_000

def event_id(event: Mapping[str, Any]) -> str:
    """The idempotency key of a decoded event: 20 hex digits."""
    get = event.get
    identity = repr(
        (get("hostname"), get("pid"), get("type"), get("uuid"), get("clock"), get("timestamp"))
    )
    return hashlib.blake2b(
        identity.encode("utf-8", "surrogatepass"), digest_size=10
    ).hexdigest()


class SeenWindow:
    """The most recent ``limit`` event keys, with the partition each was first seen in.

    Remembering the partition lets a reader forget the keys of partitions it gives up or
    starts over (their events will be applied again from a checkpoint or from history).
    Memory is bounded by ``limit`` keys (about 150 bytes each).
    """

    def __init__(self, limit: int = DEFAULT_WINDOW) -> None:
        if limit < 1:
            raise ValueError("the window must hold at least one key")
        self.limit = limit
        self._partition_of: dict[str, int | None] = {}
        self._order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._partition_of)

    def seen(self, key: str, partition: int | None = None) -> bool:
        """True if ``key`` is in the window; otherwise remember it and return False."""
        known = self._partition_of
        if key in known:
            return True
        known[key] = partition
        order = self._order
        order.append(key)
        while len(order) > self.limit:
            known.pop(order.popleft(), None)
        return False

    def recent(self, limit: int | None = None) -> list[tuple[str, int | None]]:
        """The ``limit`` most recent keys (all by default) with their partitions, oldest
        first: what a checkpoint saves and :meth:`restore` takes back."""
        keys = list(self._order)
        if limit is not None:
            keys = keys[max(0, len(keys) - limit) :]
        known = self._partition_of
        return [(key, known[key]) for key in keys]

    def restore(self, pairs: Iterable[tuple[str, int | None]]) -> None:
        """Remember ``pairs`` (from :meth:`recent`) again, in their order."""
        for key, partition in pairs:
            self.seen(key, partition)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the keys first seen in ``partitions``."""
        dropped = frozenset(partitions)
        if not dropped:
            return
        known = self._partition_of
        for key in [key for key, partition in known.items() if partition in dropped]:
            del known[key]
        self._order = deque(key for key in self._order if key in known)
