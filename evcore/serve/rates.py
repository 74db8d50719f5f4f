"""Events per second by type over the last minutes, and percentiles from the histograms:
what the dashboard's charts draw."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from evcore.serve.metrics import OVERFLOW, HistogramSeries

#: Seconds of per-second counts kept.
WINDOW = 600
#: Event types counted by name; any other type is counted as ``other``.
COUNTED = frozenset(
    {
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "task-revoked",
        "task-rejected",
        "worker-heartbeat",
        "worker-online",
        "worker-offline",
    }
)


class EventRates:
    """Counts of applied events per second and type, for the last :data:`WINDOW` seconds."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._seconds: deque[tuple[int, dict[str, int]]] = deque()

    def count(self, type_: Any, now: float | None = None) -> None:
        second = int(time.time() if now is None else now)
        seconds = self._seconds
        if not seconds or seconds[-1][0] != second:
            seconds.append((second, {}))
            while seconds and seconds[0][0] <= second - self.window:
                seconds.popleft()
        counts = seconds[-1][1]
        key = type_ if type_ in COUNTED else "other"
        counts[key] = counts.get(key, 0) + 1

    def series(self, now: float | None = None, seconds: int = 120) -> dict[str, Any]:
        """``{"start": first second, "types": {type: [count per second, ...]}}`` for the
        last ``seconds`` seconds (zeros where nothing happened)."""
        end = int(time.time() if now is None else now)
        start = end - min(seconds, self.window) + 1
        types: dict[str, list[int]] = {}
        for second, counts in list(self._seconds):
            if second < start or second > end:
                continue
            for type_, count in counts.items():
                types.setdefault(type_, [0] * (end - start + 1))[second - start] = count
        return {"start": start, "types": types}


def percentile(bounds: Sequence[float], counts: Sequence[int], fraction: float) -> float | None:
    """The ``fraction`` quantile of a histogram, interpolated inside its bucket (the top
    bucket answers its lower bound). None for an empty histogram."""
    total = sum(counts)
    if not total:
        return None
    rank = fraction * total
    seen = 0
    lower = 0.0
    for index, count in enumerate(counts):
        if seen + count >= rank and count:
            if index >= len(bounds):
                return lower
            upper = bounds[index]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
        if index < len(bounds):
            lower = bounds[index]
    return lower


def per_name(series: HistogramSeries) -> dict[str, dict[str, Any]]:
    """Percentiles per task name (label sets of one name merged; the overflow left out)."""
    merged: dict[str, list[int]] = {}
    sums: dict[str, float] = {}
    for key, histogram in list(series.series.items()):
        name = key[0]
        if name == OVERFLOW:
            continue
        counts = merged.setdefault(name, [0] * len(histogram.counts))
        for index, count in enumerate(histogram.counts):
            counts[index] += count
        sums[name] = sums.get(name, 0.0) + histogram.sum
    answer = {}
    for name, counts in merged.items():
        total = sum(counts)
        answer[name] = {
            "count": total,
            "mean": sums[name] / total if total else None,
            **{
                f"p{int(fraction * 100)}": percentile(series.bounds, counts, fraction)
                for fraction in (0.5, 0.9, 0.99)
            },
        }
    return answer


def task_stats(
    runtime: HistogramSeries, queue_wait: HistogramSeries
) -> Mapping[str, Mapping[str, Any]]:
    """``{name: {"runtime": {...}, "queue_wait": {...}}}`` for ``/api/stats/tasks``."""
    runtimes, waits = per_name(runtime), per_name(queue_wait)
    return {
        name: {"runtime": runtimes.get(name), "queue_wait": waits.get(name)}
        for name in sorted(set(runtimes) | set(waits))
    }
