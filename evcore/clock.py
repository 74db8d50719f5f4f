"""Lamport logical clock, as carried in every event's ``clock`` field."""

from __future__ import annotations

import threading


class LamportClock:
    """A thread-safe Lamport clock.

    >>> clock = LamportClock()
    >>> clock.adjust(5), clock.forward(), clock.adjust(2)
    (6, 7, 8)
    """

    __slots__ = ("_lock", "value")

    def __init__(self, initial_value: int = 0) -> None:
        self.value = initial_value
        self._lock = threading.Lock()

    def forward(self) -> int:
        """Advance by one for a local event and return the new value."""
        with self._lock:
            self.value += 1
            return self.value

    def adjust(self, other: int) -> int:
        """Merge a value seen from another process: ``max(local, other) + 1``."""
        with self._lock:
            value = self.value
            value = max(value, other)
            self.value = value + 1
            return self.value

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return f"<LamportClock: {self.value}>"


#: The process-wide clock shared by dispatchers and receivers that are not given one,
#: as Celery shares ``app.clock``.
default_clock = LamportClock()
