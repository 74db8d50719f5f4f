"""Garbage-collector settings for the long-running evcore processes (monitor, serve)."""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc() -> None:
    """Make Python's cyclic garbage collector run far less often in this process.

    A monitor replaying history allocates millions of short-lived event dicts while holding
    a large State; with the default thresholds the collector keeps re-scanning the State
    (a third of the CPU time of a replay). Evicted tasks and workers are freed by reference
    counting anyway. In ``evcore serve`` it also spares requests most of the full
    collections that stop every thread (70-90 ms at 100,000 tasks). For an application
    process (``evcore monitor`` and ``evcore serve`` call it), not for a library to call
    behind its user's back.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
