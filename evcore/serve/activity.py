"""Rolling figures of the event stream for the dashboard's charts.

:class:`Activity` keeps three small, bounded views of what went past: events per second by
type over the last few minutes, succeeded and failed tasks per minute over the last hour,
and a reservoir of recent runtimes and queue waits per task name for percentiles. Every
dimension a publisher controls (event types, task names) is capped, with the excess
counted under ``"(other)"``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

#: The bucket that event types and task names past the caps are counted under.
OTHER = "(other)"


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Runtime and queue-wait percentiles (seconds) of one task name's recent executions."""

    name: str
    count: int
    runtime: tuple[float | None, float | None, float | None]
    wait: tuple[float | None, float | None, float | None]


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of sorted ``values`` (``fraction`` in 0..1)."""
    if not values:
        return None
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


def _three(samples: deque[float]) -> tuple[float | None, float | None, float | None]:
    ordered = sorted(samples)
    return (percentile(ordered, 0.5), percentile(ordered, 0.9), percentile(ordered, 0.99))


class _Samples:
    __slots__ = ("count", "runtime", "wait")

    def __init__(self, size: int) -> None:
        self.count = 0
        self.runtime: deque[float] = deque(maxlen=size)
        self.wait: deque[float] = deque(maxlen=size)


class Activity:
    """Bounded rolling counters fed one event at a time (thread-safe).

    ``seconds`` per-second buckets and ``minutes`` per-minute buckets are kept; at most
    ``max_types`` event types and ``max_names`` task names are told apart, each name with
    the last ``samples_per_name`` runtimes and waits.
    """

    def __init__(
        self,
        *,
        seconds: int = 120,
        minutes: int = 60,
        max_types: int = 24,
        max_names: int = 200,
        samples_per_name: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.seconds = seconds
        self.minutes = minutes
        self.max_types = max_types
        self.max_names = max_names
        self.samples_per_name = samples_per_name
        self.clock = clock
        self._lock = threading.Lock()
        self._per_second: deque[tuple[int, dict[str, int]]] = deque(maxlen=seconds)
        self._per_minute: deque[tuple[int, list[int]]] = deque(maxlen=minutes)
        self._types: set[str] = set()
        self._names: OrderedDict[str, _Samples] = OrderedDict()

    def observe(
        self,
        event_type: str,
        *,
        name: str | None = None,
        runtime: float | None = None,
        wait: float | None = None,
    ) -> None:
        """Count one event of ``event_type`` now, with a task's runtime or queue wait."""
        now = self.clock()
        with self._lock:
            kind = self._type_bucket(event_type)
            second = int(now)
            if not self._per_second or self._per_second[-1][0] != second:
                self._per_second.append((second, {}))
            counts = self._per_second[-1][1]
            counts[kind] = counts.get(kind, 0) + 1
            if event_type in ("task-succeeded", "task-failed"):
                minute = second // 60
                if not self._per_minute or self._per_minute[-1][0] != minute:
                    self._per_minute.append((minute, [0, 0]))
                self._per_minute[-1][1][event_type == "task-failed"] += 1
            if name is not None and (runtime is not None or wait is not None):
                samples = self._samples(name)
                if runtime is not None and math.isfinite(runtime) and runtime >= 0:
                    samples.count += 1
                    samples.runtime.append(runtime)
                if wait is not None and math.isfinite(wait) and wait >= 0:
                    samples.wait.append(wait)

    def _type_bucket(self, event_type: str) -> str:
        if event_type in self._types:
            return event_type
        if len(self._types) < self.max_types:
            self._types.add(event_type)
            return event_type
        return OTHER

    def _samples(self, name: str) -> _Samples:
        samples = self._names.get(name)
        if samples is not None:
            self._names.move_to_end(name)
            return samples
        if len(self._names) >= self.max_names:
            if name != OTHER and OTHER in self._names:
                return self._samples(OTHER)
            self._names.popitem(last=False)
            name = OTHER
        samples = self._names[name] = _Samples(self.samples_per_name)
        return samples

    def rates(self) -> dict[str, list[int]]:
        """Events per second by type over the last ``seconds`` seconds, oldest first.

        The current, unfinished second is left out so a chart never shows it half full.
        """
        now = int(self.clock())
        start = now - self.seconds
        with self._lock:
            series: dict[str, list[int]] = {kind: [0] * self.seconds for kind in self._types}
            for second, counts in self._per_second:
                if start <= second < now:
                    for kind, count in counts.items():
                        series.setdefault(kind, [0] * self.seconds)[second - start] += count
        return series

    def outcomes(self) -> list[tuple[int, int, int]]:
        """``(minute start as epoch seconds, succeeded, failed)`` for the last minutes."""
        now_minute = int(self.clock()) // 60
        with self._lock:
            by_minute = {minute: (counts[0], counts[1]) for minute, counts in self._per_minute}
        first = now_minute - self.minutes + 1
        rows = []
        for minute in range(first, now_minute + 1):
            succeeded, failed = by_minute.get(minute, (0, 0))
            rows.append((minute * 60, succeeded, failed))
        return rows

    def percentiles(self, limit: int = 20) -> list[Percentiles]:
        """The busiest ``limit`` task names with their runtime and wait percentiles."""
        with self._lock:
            busiest = sorted(self._names.items(), key=lambda item: -item[1].count)[:limit]
            return [
                Percentiles(name, samples.count, _three(samples.runtime), _three(samples.wait))
                for name, samples in busiest
            ]
