"""The subscriptions a transport has open, so that closing the transport closes them.

A transport creates one :class:`OpenSubscriptions`, gives its ``forget`` to each
subscription (called from the subscription's ``close()``), refuses a subscription that
:meth:`~OpenSubscriptions.add` turns down, and closes what
:meth:`~OpenSubscriptions.close` returns.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

__all__ = ["OpenSubscriptions"]

S = TypeVar("S")


class OpenSubscriptions(Generic[S]):
    """A thread-safe set of open subscriptions that refuses new ones once closed, so a
    ``subscribe()`` racing with ``close()`` cannot leave one open behind it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[S] = set()
        self._closed = False

    def add(self, subscription: S) -> bool:
        """Track ``subscription``; False (and not tracked) once :meth:`close` was called:
        the caller closes it and raises."""
        with self._lock:
            if self._closed:
                return False
            self._open.add(subscription)
            return True

    def forget(self, subscription: S) -> None:
        """Stop tracking ``subscription`` (its own ``close()`` calls this)."""
        with self._lock:
            self._open.discard(subscription)

    def close(self) -> list[S]:
        """Refuse new subscriptions from now on; the open ones, for the caller to close."""
        with self._lock:
            self._closed = True
            subscriptions = list(self._open)
            self._open.clear()
        return subscriptions

    def __len__(self) -> int:
        return len(self._open)
