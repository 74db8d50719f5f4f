"""A background writer: coalesces messages into batched publishes on its own thread."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from evcore.transport import OutgoingMessage

logger = logging.getLogger(__name__)

#: A message and how many events it holds.
Item = tuple[OutgoingMessage, int]


class BackgroundWriter:
    """Hands queued messages to ``publish_many`` in batches, from one daemon thread.

    ``submit`` returns at once unless ``max_pending`` messages are already waiting, in
    which case it blocks until the writer catches up (back-pressure, never loss). After
    the first message of a batch arrives the writer lingers up to ``linger`` seconds for
    more, and publishes at most ``max_batch`` messages per call.
    """

    def __init__(
        self,
        publish_many: Callable[[list[Item]], None],
        max_pending: int = 10_000,
        max_batch: int = 512,
        linger: float = 0.0005,
        name: str = "evcore-writer",
    ) -> None:
        self._publish_many = publish_many
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.linger = linger
        self._queue: deque[Item] = deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._in_flight = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> None:
        """Queue one message; block while ``max_pending`` are already waiting."""
        with self._changed:
            while len(self._queue) >= self.max_pending and not self._stopping:
                self._changed.wait(0.1)
            self._queue.append(item)
            if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
                self._changed.notify_all()

    @property
    def pending(self) -> int:
        """Messages queued or being published."""
        with self._lock:
            return len(self._queue) + self._in_flight

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far has been handed to ``publish_many``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._queue or self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.notify_all()
                self._changed.wait(remaining if remaining is not None else 0.1)
            return True

    def stop(self) -> None:
        """Publish what is queued, then end the thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join()

    def _take_batch(self) -> list[Item] | None:
        with self._changed:
            while not self._queue:
                if self._stopping:
                    return None
                self._changed.wait()
            if self.linger > 0 and len(self._queue) < self.max_batch and not self._stopping:
                self._changed.wait(self.linger)
            count = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(count)]
            self._in_flight = count
            self._changed.notify_all()
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            try:
                self._publish_many(batch)
            except Exception:  # the dispatcher buffers connection errors; anything else is a bug
                logger.exception("background writer failed to publish %d message(s)", len(batch))
            finally:
                with self._changed:
                    self._in_flight = 0
                    self._changed.notify_all()
