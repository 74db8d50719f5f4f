"""Retention per task state and a memory budget in bytes, on top of the State's count limits."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

from evcore.state.task import Task

if TYPE_CHECKING:
    from evcore.state.cluster import State

#: Bytes a task costs besides its own object and values: its entries in the task map, the
#: time index (up to four), the name and worker indexes (measured with tracemalloc).
TASK_OVERHEAD_BYTES = 700
#: Tasks sampled to estimate the average size.
SAMPLE_SIZE = 256


@dataclass
class RetentionPolicy:
    """How long finished tasks are kept, by state, and how much memory tasks may take.

    ``max_age`` maps a state (``"SUCCESS"``, ``"FAILURE"``...) to seconds since the task's
    newest event was received; states not named are kept until the count limit or the
    budget evicts them. ``memory_budget`` bounds the estimated bytes of the tasks held;
    past it the least recently used tasks are evicted.
    """

    max_age: Mapping[str, float] = field(default_factory=dict)
    memory_budget: int | None = None
    #: Tasks removed for their age, by state.
    expired: dict[str, int] = field(default_factory=dict)
    #: Tasks evicted to stay under the memory budget.
    budget_evictions: int = 0
    #: The last estimate of the bytes held by tasks.
    estimated_bytes: int = 0

    def __post_init__(self) -> None:
        for state, seconds in self.max_age.items():
            if not seconds > 0:
                raise ValueError(f"retention of {state} must be positive, not {seconds!r}")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ValueError("memory_budget must be positive")

    def apply(self, state: State, now: float | None = None, max_tasks: int | None = None) -> int:
        """Remove expired tasks, then evict to fit the budget; returns how many went.
        ``max_tasks`` is the configured count limit (see :meth:`fit_budget`)."""
        return self.expire(state, now) + self.fit_budget(state, max_tasks)

    def expire(self, state: State, now: float | None = None) -> int:
        """Remove tasks older than their state's ``max_age``."""
        if not self.max_age:
            return 0
        return state.freeze_while(self._expire, state, time.time() if now is None else now)

    def _expire(self, state: State, now: float) -> int:
        max_age = self.max_age
        removed = 0
        for uuid, task in state.itertasks():
            limit = max_age.get(task.state)
            if limit is None:
                continue
            seen = _seen(task)
            if seen is not None and now - seen > limit:
                del state.tasks[uuid]
                self.expired[task.state] = self.expired.get(task.state, 0) + 1
                removed += 1
        return removed

    def fit_budget(self, state: State, max_tasks: int | None = None) -> int:
        """Evict the least recently used tasks while the estimate exceeds the budget.

        The budget also becomes the State's task count limit (the smaller of ``max_tasks``
        and what the budget holds at the estimated size per task), so that the State
        itself evicts on arrival until the next estimate.
        """
        return state.freeze_while(self._fit_budget, state, max_tasks)

    def _fit_budget(self, state: State, max_tasks: int | None) -> int:
        self.estimated_bytes = estimate_task_bytes(state)
        budget = self.memory_budget
        count = len(state.tasks)
        if budget is None or not count:
            return 0
        per_task = self.estimated_bytes / count
        # Leave 5% of room: sizes vary between two estimates.
        keep = max(1, int(budget * 0.95 / per_task))
        state.max_tasks_in_memory = keep if not max_tasks else min(max_tasks, keep)
        evict = max(0, count - keep)
        for uuid, _task in list(islice(state.itertasks(), evict)):
            del state.tasks[uuid]
        self.budget_evictions += evict
        self.estimated_bytes = int(per_task * (count - evict))
        return evict


def _seen(task: Task) -> float | None:
    value = task.local_received
    if value.__class__ is float or value.__class__ is int:
        return float(value)
    value = task.timestamp
    if value.__class__ is float or value.__class__ is int:
        return float(value)
    return None


def task_bytes(task: Task) -> int:
    """The bytes of one task: the object, its field values, extras and children."""
    size = sys.getsizeof(task) + TASK_OVERHEAD_BYTES
    for name in Task.__slots__:
        if name in ("worker", "cluster_state"):
            continue  # shared with other tasks
        value = getattr(task, name, None)
        if value is not None and value.__class__ is not bool:
            size += _value_bytes(value)
    return size


def _value_bytes(value: Any) -> int:
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(_value_bytes(k) + _value_bytes(v) for k, v in value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        size += sum(_value_bytes(item) for item in value)
    return size


def estimate_task_bytes(state: State, sample: int = SAMPLE_SIZE) -> int:
    """The estimated bytes of the tasks in ``state``: the average of a sample of the most
    recent ones times their number."""

    def take() -> list[Task]:
        tasks = state.tasks.data
        step = max(1, len(tasks) // sample)
        return list(islice(reversed(tasks.values()), 0, None, step))[:sample]

    sampled = state.freeze_while(take)
    if not sampled:
        return 0
    count = len(state.tasks)
    total = sum(task_bytes(task) for task in sampled)
    return int(total / len(sampled) * count)
