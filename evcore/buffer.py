"""The Dispatcher's offline buffer: what could not be published, bounded in count and bytes."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Literal

from evcore.transport import OutgoingMessage

DropPolicy = Literal["drop-oldest", "drop-newest"]


class OfflineBuffer:
    """A FIFO of unpublished messages that never grows past its bounds.

    When a message does not fit, the ``policy`` decides what goes: ``"drop-oldest"`` makes
    room by discarding from the head, ``"drop-newest"`` refuses the new message. Either way
    each discarded message is counted in :attr:`dropped` (and its events in
    :attr:`dropped_events`).
    """

    def __init__(
        self,
        max_messages: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        policy: DropPolicy = "drop-oldest",
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("offline buffer bounds must be positive")
        if policy not in ("drop-oldest", "drop-newest"):
            raise ValueError(f"unknown drop policy {policy!r}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.policy: DropPolicy = policy
        self._items: deque[tuple[OutgoingMessage, int]] = deque()
        self.bytes = 0
        self.dropped = 0
        self.dropped_events = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def append(self, message: OutgoingMessage, events: int = 1) -> None:
        """Buffer ``message`` (holding ``events`` events), dropping per the policy if full."""
        size = len(message.body)
        if size > self.max_bytes or (
            self.policy == "drop-newest" and not self._fits(size)
        ):
            self._count_drop(events)
            return
        while not self._fits(size):
            old, old_events = self._items.popleft()
            self.bytes -= len(old.body)
            self._count_drop(old_events)
        self._items.append((message, events))
        self.bytes += size

    def extend(self, items: Iterable[tuple[OutgoingMessage, int]]) -> None:
        """Append several ``(message, events)`` pairs, in order."""
        for message, events in items:
            self.append(message, events)

    def take_all(self) -> list[tuple[OutgoingMessage, int]]:
        """Remove and return everything buffered, oldest first."""
        items = list(self._items)
        self._items.clear()
        self.bytes = 0
        return items

    def put_back(self, items: list[tuple[OutgoingMessage, int]]) -> None:
        """Return unsent items to the head, ahead of anything buffered meanwhile."""
        newer = self.take_all()
        self.extend(items)
        self.extend(newer)

    @property
    def events(self) -> int:
        """How many events the buffered messages hold."""
        return sum(events for _, events in self._items)

    def _fits(self, size: int) -> bool:
        return len(self._items) < self.max_messages and self.bytes + size <= self.max_bytes

    def _count_drop(self, events: int) -> None:
        self.dropped += 1
        self.dropped_events += events
