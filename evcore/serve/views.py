"""What the dashboard shows, read from a :class:`~evcore.state.State` as plain JSON data.

Every string here comes from events, so from whoever can publish on the broker: it is cut
to a bounded length and handed to the page as data (the page renders it as text). Queries
scan the tasks once and keep only the requested page (``heapq``), so a page of a 100k-task
State costs one pass, not a full sort.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from evcore.state import State, Task, Worker
from evcore.state.liveness import LivenessPolicy, liveness

#: Longest string kept in a table row; longer ones end with an ellipsis.
ROW_TEXT = 200
#: Longest string kept on a task's page (args, result, traceback...).
DETAIL_TEXT = 64 * 1024
#: Most rows one page may ask for.
MAX_PAGE = 500
#: Most children listed on a task's page.
MAX_CHILDREN = 200


def clip(value: Any, limit: int = ROW_TEXT) -> str | None:
    """``value`` as a string of at most ``limit`` characters (None stays None)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return text[: limit - 1] + "\u2026"
    return text


def number(value: Any) -> float | None:
    """``value`` if it is a finite number, else None (event fields are untrusted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def worker_name(task: Task) -> str:
    """The hostname of the worker a task ran on; empty for a task no worker has taken."""
    worker = task.worker
    if isinstance(worker, Worker):
        return worker.hostname or ""
    return ""


def _when(task: Task) -> float:
    """When a task was received (or sent, or last heard of), for sorting and time filters."""
    value = task.received or task.sent or task.timestamp
    return float(value) if type(value) in (float, int) else 0.0


def _runtime(task: Task) -> float:
    value = task.runtime
    return float(value) if type(value) in (float, int) else -1.0


def _started(task: Task) -> float:
    value = task.started
    return float(value) if type(value) in (float, int) else 0.0


#: Task columns the table can sort by, and the sort key of each (one type per column, so
#: hostile field values never compare a string with a number).
SORT_KEYS: Mapping[str, Callable[[Task], Any]] = {
    "received": _when,
    "started": _started,
    "runtime": _runtime,
    "name": lambda task: str(task.name or ""),
    "state": lambda task: str(task.state or ""),
    "worker": worker_name,
}


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """A page of the task table: filters, sort order and window."""

    search: str = ""
    state: str = ""
    name: str = ""
    worker: str = ""
    since: float | None = None
    until: float | None = None
    sort: str = "received"
    descending: bool = True
    offset: int = 0
    limit: int = 50

    def filters(self) -> list[Callable[[Task], bool]]:
        """One test per filter that is set; a task must pass them all."""
        tests: list[Callable[[Task], bool]] = []
        if self.state:
            tests.append(lambda task: task.state == self.state)
        if self.name:
            tests.append(lambda task: task.name == self.name)
        if self.worker:
            tests.append(lambda task: worker_name(task) == self.worker)
        if self.since is not None:
            tests.append(lambda task: _when(task) >= self.since)  # type: ignore[operator]
        if self.until is not None:
            tests.append(lambda task: _when(task) <= self.until)  # type: ignore[operator]
        if self.search:
            needle = self.search.casefold()
            tests.append(
                lambda task: any(
                    isinstance(text, str) and needle in text.casefold()
                    for text in (task.uuid, task.name, task.args, task.kwargs)
                )
            )
        return tests


def task_row(task: Task) -> dict[str, Any]:
    """One line of the task table."""
    return {
        "uuid": clip(task.uuid),
        "name": clip(task.name),
        "state": clip(task.state),
        "worker": clip(worker_name(task)),
        "received": number(task.received) or number(task.sent),
        "started": number(task.started),
        "runtime": number(task.runtime),
        "args": clip(task.args),
        "exception": clip(task.exception),
    }


def query_tasks(state: State, query: TaskQuery) -> dict[str, Any]:
    """The rows of one page of ``query`` and the number of tasks that match in all."""
    key = SORT_KEYS.get(query.sort, SORT_KEYS["received"])
    limit = max(0, min(query.limit, MAX_PAGE))
    offset = max(0, query.offset)
    matching = list(state.tasks.values())
    for test in query.filters():
        matching = [task for task in matching if test(task)]
    wanted = offset + limit
    if wanted * 8 < len(matching):  # a heap of the first pages beats sorting them all
        pick = heapq.nlargest if query.descending else heapq.nsmallest
        page = pick(wanted, matching, key=key)[offset:]
    else:
        page = sorted(matching, key=key, reverse=query.descending)[offset:wanted]
    return {"total": len(matching), "tasks": [task_row(task) for task in page]}


def _timeline(task: Task) -> list[dict[str, Any]]:
    steps = []
    for stage in (
        "sent",
        "received",
        "started",
        "succeeded",
        "failed",
        "retried",
        "revoked",
        "rejected",
    ):
        when = number(getattr(task, stage, None))
        if when is not None:
            steps.append({"stage": stage, "at": when})
    steps.sort(key=lambda step: step["at"])
    return steps


def _link(task: Task | None) -> dict[str, Any] | None:
    if task is None:
        return None
    return {"uuid": clip(task.uuid), "name": clip(task.name), "state": clip(task.state)}


def task_detail(state: State, uuid: str) -> dict[str, Any] | None:
    """Everything the task page shows, or None for a task the State does not hold."""
    task = state.tasks.get(uuid)
    if task is None:
        return None
    received, started = number(task.received), number(task.started)
    children = sorted(task.children, key=_when)
    return {
        **task_row(task),
        "args": clip(task.args, DETAIL_TEXT),
        "kwargs": clip(task.kwargs, DETAIL_TEXT),
        "result": clip(task.result, DETAIL_TEXT),
        "exception": clip(task.exception, DETAIL_TEXT),
        "traceback": clip(task.traceback, DETAIL_TEXT),
        "retries": number(task.retries),
        "eta": clip(task.eta),
        "expires": clip(task.expires),
        "client": clip(task.client),
        "timeline": _timeline(task),
        "wait": started - received if started is not None and received is not None else None,
        "parent": _link(task.parent) or _missing(task.parent_id),
        "root": _link(task.root) or _missing(task.root_id),
        "children": [_link(child) for child in children[:MAX_CHILDREN]],
        "children_total": len(children),
    }


def _missing(uuid: Any) -> dict[str, Any] | None:
    """A link to a task the State no longer (or never) held: its uuid alone."""
    if not isinstance(uuid, str) or not uuid:
        return None
    return {"uuid": clip(uuid), "name": None, "state": None}


def worker_row(worker: Worker, now: float, policy: LivenessPolicy) -> dict[str, Any]:
    """One line of the workers table; the status comes from ``policy``'s windows."""
    alive = liveness(worker, policy, now)
    loadavg = worker.loadavg if isinstance(worker.loadavg, (list, tuple)) else []
    software = " ".join(str(part) for part in (worker.sw_ident, worker.sw_ver) if part)
    return {
        "hostname": clip(worker.hostname),
        "status": alive.status,
        "last_heartbeat": alive.last_seen,
        "seen_ago": alive.seen_ago,
        "active": number(worker.active),
        "processed": number(worker.processed),
        "loadavg": [number(value) for value in loadavg[:3]],
        "software": clip(software),
    }


def workers_table(state: State, policy: LivenessPolicy) -> list[dict[str, Any]]:
    """Every worker, sorted by hostname."""
    now = time.time()
    rows = [worker_row(worker, now, policy) for worker in state.workers.values()]
    rows.sort(key=lambda row: row["hostname"] or "")
    return rows


def worker_detail(
    state: State, hostname: str, policy: LivenessPolicy, recent: int = 50
) -> dict[str, Any] | None:
    """A worker's row and its most recent tasks, or None for an unknown worker."""
    worker = state.workers.get(hostname)
    if worker is None:
        return None
    page = query_tasks(state, TaskQuery(worker=hostname, limit=recent))
    return {
        **worker_row(worker, time.time(), policy),
        "tasks": page["tasks"],
        "tasks_total": page["total"],
    }
