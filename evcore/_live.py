"""The Dispatchers and Receivers alive in this process, held weakly, so the pytest plugin
can close the ones a test left open without scanning the heap."""

from __future__ import annotations

import threading
import weakref

_lock = threading.Lock()
_endpoints: weakref.WeakSet[object] = weakref.WeakSet()


def track(endpoint: object) -> None:
    """Remember ``endpoint`` until it is garbage."""
    with _lock:
        _endpoints.add(endpoint)


def alive() -> list[object]:
    """Every tracked endpoint not yet garbage collected."""
    with _lock:
        return list(_endpoints)
