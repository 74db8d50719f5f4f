"""The State's secondary indexes: tasks by key (type, worker) and tasks by time.

Both hold task uuids, not objects, and are kept exact: the State removes a task from them
when it evicts or clears it. Readers resolve uuids to tasks through the State.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, KeysView, Mapping, Set
from heapq import heappop, heappush
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evcore.state.task import Task

#: One entry of the time index: ``(clock, origin, seq, uuid)``, or
#: ``(0, timestamp, seq, uuid)`` for an event without a Lamport clock.
TimeEntry = tuple[Any, Any, int, str]


class TaskSet(Set["Task"]):
    """The tasks of one index key, resolved when read (iteration yields :class:`Task`)."""

    __slots__ = ("_resolve", "_uuids")

    def __init__(self, uuids: frozenset[str], resolve: Callable[[Iterator[str]], list[Task]]):
        self._uuids = uuids
        self._resolve = resolve

    def __iter__(self) -> Iterator[Task]:
        return iter(self._resolve(iter(self._uuids)))

    def __len__(self) -> int:
        return len(self._uuids)

    def __contains__(self, item: object) -> bool:
        uuid = getattr(item, "uuid", item)
        return uuid in self._uuids

    @property
    def uuids(self) -> frozenset[str]:
        """The uuids of the tasks."""
        return self._uuids

    def __repr__(self) -> str:
        return f"<TaskSet: {len(self._uuids)} tasks>"


class TaskIndex(Mapping[str, TaskSet]):
    """A key -> tasks index that is also callable, like Celery's ``tasks_by_type``.

    ``index[key]`` is a :class:`TaskSet` (empty for an unknown key); ``index(key, limit=None,
    reverse=True)`` yields ``(uuid, task)`` pairs ordered by time, newest first by default.
    """

    __slots__ = ("_query", "_resolve", "_sets", "_snapshot")

    def __init__(
        self,
        query: Callable[..., Iterator[tuple[str, Task]]],
        resolve: Callable[[Iterator[str]], list[Task]],
        snapshot: Callable[[Callable[[], Any]], Any],
    ) -> None:
        self._sets: dict[str, set[str]] = {}
        self._query = query
        self._resolve = resolve
        self._snapshot = snapshot

    def __call__(
        self, key: str, limit: int | None = None, reverse: bool = True
    ) -> Iterator[tuple[str, Task]]:
        return self._query(key, limit=limit, reverse=reverse)

    def __getitem__(self, key: str) -> TaskSet:
        uuids = self._snapshot(lambda: frozenset(self._sets.get(key, ())))
        return TaskSet(uuids, self._resolve)

    def __contains__(self, key: object) -> bool:
        return key in self._sets

    def __iter__(self) -> Iterator[str]:
        return iter(self._snapshot(lambda: list(self._sets)))

    def __len__(self) -> int:
        return len(self._sets)

    def keys(self) -> KeysView[str]:
        return KeysView(self)

    def _discard(self, key: str | None, uuid: str) -> None:
        if key is None:
            return
        uuids = self._sets.get(key)
        if uuids is not None:
            uuids.discard(uuid)
            if not uuids:
                del self._sets[key]

    def _clear(self) -> None:
        self._sets.clear()


class TimeIndex:
    """Task events ordered by Lamport clock (ties: origin, then arrival), bounded.

    Entries that arrive in order (the common case) are appended to a sorted list; when the
    bound is reached the oldest entry is dropped, as Celery's task heap does, but in
    amortised constant time (a moving head that is compacted in batches). An entry older
    than the newest one (a sender whose clock lags the others) goes to a small heap
    instead of being inserted into the middle of the list, which would move every newer
    entry; the heap is merged into the list when the entries are read.
    """

    __slots__ = ("_entries", "_head", "_late", "dropped", "limit")

    def __init__(self, limit: int | None) -> None:
        self._entries: list[TimeEntry] = []
        self._head = 0
        #: Entries that arrived out of order, as a heap (the oldest first).
        self._late: list[TimeEntry] = []
        #: The bound on entries; None or 0 means unbounded.
        self.limit = limit
        #: How many entries were dropped to respect the bound.
        self.dropped = 0

    def add(self, entry: TimeEntry) -> None:
        """Insert one entry, dropping the oldest first if the index is full."""
        entries = self._entries
        limit = self.limit
        if limit and len(entries) - self._head + len(self._late) >= limit:
            self._drop_oldest()
        if not entries or entry > entries[-1]:
            entries.append(entry)
        else:
            heappush(self._late, entry)

    def _drop_oldest(self) -> None:
        self.dropped += 1
        late, entries = self._late, self._entries
        if late and (self._head >= len(entries) or late[0] < entries[self._head]):
            heappop(late)
            return
        self._head += 1
        if self._head >= 64 and self._head * 8 >= len(entries):
            del entries[: self._head]
            self._head = 0

    def _merge_late(self) -> None:
        """Fold the out-of-order entries into the sorted list."""
        entries = self._entries[self._head :]
        entries += self._late
        entries.sort()  # two sorted runs after sorting the heap's part: a linear merge
        self._entries = entries
        self._head = 0
        self._late = []

    def entries(self) -> list[TimeEntry]:
        """A copy of the live entries, oldest first."""
        if self._late:
            self._merge_late()
        return self._entries[self._head :]

    def replace(self, entries: list[TimeEntry]) -> None:
        """Replace every entry with ``entries`` (sorted here), keeping only the newest."""
        entries.sort()
        if self.limit and len(entries) > self.limit:
            del entries[: len(entries) - self.limit]
        self._entries = entries
        self._head = 0
        self._late = []

    def __len__(self) -> int:
        return len(self._entries) - self._head + len(self._late)
