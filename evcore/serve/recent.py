"""Newest tasks first without sorting them all: a log of ``(timestamp, uuid)`` in the
order events were applied, read backwards.

Flower's default order is the task's ``timestamp``, newest first. Events mostly arrive in
timestamp order, so reading the log from its end finds the newest tasks early; the prefix
maximum of the timestamps, kept per block, says when nothing earlier in the log can still
rank, and the scan stops there. The answer is exact whatever the disorder (a skewed clock
only makes the scan longer). Entries are checked against the task when read: a task that
moved on or was evicted leaves stale entries, dropped when the log is compacted.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping

from evcore.state import Task

#: Entries per block of the prefix maximum.
BLOCK = 1024


def timestamp_key(task: Task) -> float:
    """The timestamp Flower sorts by (0 when it is not a number)."""
    stamp = task.timestamp
    if stamp.__class__ is float or stamp.__class__ is int:
        return float(stamp)
    return 0.0


class RecentIndex:
    """``(timestamp, uuid)`` entries in applied order, with per-block prefix maxima."""

    def __init__(self, block: int = BLOCK) -> None:
        self.block = block
        self._stamps: list[float] = []
        self._uuids: list[str] = []
        #: The largest timestamp among entries ``[0, (b + 1) * BLOCK)``, per full block b.
        self._prefix_max: list[float] = []
        self._max = float("-inf")

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, task: Task) -> None:
        """Record ``task`` at its current timestamp."""
        stamp = timestamp_key(task)
        self._stamps.append(stamp)
        self._uuids.append(task.uuid)
        self._max = max(self._max, stamp)
        if len(self._stamps) % self.block == 0:
            self._prefix_max.append(self._max)

    def rebuild(self, tasks: Mapping[str, Task]) -> None:
        """Start again from ``tasks`` (drops stale entries), oldest timestamp first."""
        entries = sorted((timestamp_key(task), uuid) for uuid, task in tasks.items())
        self._stamps, self._uuids, self._prefix_max = [], [], []
        self._max = float("-inf")
        for stamp, uuid in entries:
            self._stamps.append(stamp)
            self._uuids.append(uuid)
            self._max = max(self._max, stamp)
            if len(self._stamps) % self.block == 0:
                self._prefix_max.append(self._max)

    def newest(
        self,
        tasks: Mapping[str, Task],
        count: int,
        accept: Callable[[Task], bool] | None = None,
    ) -> list[Task]:
        """The ``count`` newest tasks (by timestamp, then uuid, descending) that
        ``accept``, read from ``tasks``."""
        if count <= 0:
            return []
        stamps, uuids = self._stamps, self._uuids
        best: list[tuple[float, str]] = []  # a min-heap of the best found so far
        seen: set[str] = set()
        size = self.block
        end = len(stamps)
        block = (end - 1) // size
        while block >= 0:
            if len(best) >= count:
                # Entries before this block's end cannot beat the worst of the best.
                ceiling = self._max if block >= len(self._prefix_max) else self._prefix_max[block]
                if ceiling < best[0][0]:
                    break
            start = block * size
            for position in range(min(end, start + size) - 1, start - 1, -1):
                stamp = stamps[position]
                if len(best) >= count and stamp < best[0][0]:
                    continue
                uuid = uuids[position]
                if uuid in seen:
                    continue
                task = tasks.get(uuid)
                if task is None or timestamp_key(task) != stamp:
                    continue  # evicted, or moved to a newer entry
                seen.add(uuid)
                if accept is not None and not accept(task):
                    continue
                entry = (stamp, uuid)
                if len(best) < count:
                    heapq.heappush(best, entry)
                elif entry > best[0]:
                    heapq.heapreplace(best, entry)
            block -= 1
        best.sort(reverse=True)
        return [tasks[uuid] for _, uuid in best if uuid in tasks]

    def needs_compaction(self, live: int) -> bool:
        """Whether stale entries outnumber live ones enough to rebuild."""
        return len(self._stamps) > 4 * live + 10_000
