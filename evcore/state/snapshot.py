"""JSON snapshots of a State: versioned, pickle-free, limits re-applied on restore.

A snapshot is a JSON object::

    {"format": "evcore.state", "version": 1, "ordering": "celery",
     "limits": {"max_workers_in_memory": 5000, "max_tasks_in_memory": 10000},
     "counters": {"event_count": 12, "task_count": 3},
     "task_types": ["proj.add"],
     "workers": [...], "detached_workers": [...], "tasks": [...],
     "pending_children": {"<parent uuid>": ["<child uuid>", ...]}}

``workers`` and ``tasks`` are in least-recently-used order, so that restoring into smaller
limits keeps the most recent ones. ``detached_workers`` are workers that tasks still refer
to but that were evicted from (or never stored in) ``workers``. The time index is rebuilt
with one entry per task, from its clock and timestamp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from evcore.codec import dumps, loads
from evcore.state.record import set_fields
from evcore.state.task import Task
from evcore.state.worker import Worker

if TYPE_CHECKING:
    from evcore.state.cluster import State

FORMAT = "evcore.state"
VERSION = 1

_WORKER_FIELDS = tuple(sorted(Worker._settable - {"hostname"}))
_TASK_FIELDS = tuple(sorted(Task._settable | {"state"}))


class SnapshotError(ValueError):
    """A snapshot that is not an evcore State snapshot, or of an unknown version."""


def to_json(state: State) -> str:
    """The state as JSON text (see the module documentation for the format)."""
    return dumps(snapshot(state)).decode("utf-8")


def snapshot(state: State) -> dict[str, Any]:
    """The state as a JSON-serialisable dict, taken under the state's lock."""
    with state._lock:
        stored = state._workers
        detached: dict[str, Worker] = {}
        for task in state._tasks.values():
            worker = task.worker
            if worker is not None and stored.get(str(worker.hostname)) is not worker:
                detached[str(worker.hostname)] = worker
        return {
            "format": FORMAT,
            "version": VERSION,
            "ordering": state.ordering.name,
            "limits": {
                "max_workers_in_memory": state.max_workers_in_memory,
                "max_tasks_in_memory": state.max_tasks_in_memory,
            },
            "counters": {"event_count": state.event_count, "task_count": state.task_count},
            "task_types": sorted(state._seen_types),
            "workers": [_dump_worker(worker) for worker in stored.values()],
            "detached_workers": [_dump_worker(worker) for worker in detached.values()],
            "tasks": [_dump_task(task) for task in state._tasks.values()],
            "pending_children": {
                parent: sorted(children) for parent, children in state._pending.items()
            },
        }


def parse(data: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    """Decode and check a snapshot; raises :class:`SnapshotError` if it is not one."""
    decoded = loads(data) if isinstance(data, str | bytes) else data
    if not isinstance(decoded, Mapping) or decoded.get("format") != FORMAT:
        raise SnapshotError("not an evcore State snapshot")
    if decoded.get("version") != VERSION:
        raise SnapshotError(f"unsupported snapshot version {decoded.get('version')!r}")
    return decoded


def restore(state: State, data: Mapping[str, Any]) -> None:
    """Fill an empty ``state`` from a parsed snapshot, applying ``state``'s own limits."""
    with state._lock:
        counters = data.get("counters", {})
        state.event_count = int(counters.get("event_count", 0))
        state.task_count = int(counters.get("task_count", 0))
        state._seen_types.update(data.get("task_types", ()))
        workers = {}
        for fields in data.get("detached_workers", ()):
            worker = _load_worker(fields)
            workers[worker.hostname] = worker
        for fields in data.get("workers", ()):
            worker = _load_worker(fields)
            workers[worker.hostname] = worker
            state._workers[str(worker.hostname)] = worker
        state._evict_workers()
        for fields in data.get("tasks", ()):
            task = _load_task(state, fields, workers)
            state._tasks[task.uuid] = task
            state._evict_tasks()
        for task in state._tasks.values():
            if task._children:
                task._children.intersection_update(state._tasks)
            if task.name.__class__ is str:
                state._reindex(task, None, None, None)
        for parent_id, children in data.get("pending_children", {}).items():
            state._pending[parent_id] = set(children)
        limit = state.max_tasks_in_memory
        while limit and len(state._pending) > limit:
            state._pending.popitem(last=False)
        state.rebuild_taskheap()


def _dump_worker(worker: Worker) -> dict[str, Any]:
    data: dict[str, Any] = {"hostname": worker.hostname, "heartbeats": list(worker.heartbeats)}
    for name in _WORKER_FIELDS:
        data[name] = getattr(worker, name)
    if worker._extra:
        data["extra"] = dict(worker._extra)
    return data


def _load_worker(data: Mapping[str, Any]) -> Worker:
    worker = Worker(data["hostname"], heartbeats=list(data.get("heartbeats", ())))
    set_fields(worker, {name: data[name] for name in _WORKER_FIELDS if name in data})
    for key, value in data.get("extra", {}).items():
        worker._set_extra(key, value)
    return worker


def _dump_task(task: Task) -> dict[str, Any]:
    data: dict[str, Any] = {}
    defaults = Task._defaults
    for name in _TASK_FIELDS:
        value = getattr(task, name)
        if value != defaults.get(name):
            data[name] = value
    data["uuid"] = task.uuid
    worker = task.worker
    if worker is not None:
        data["worker"] = worker.hostname
    if task._children:
        data["children"] = sorted(task._children)
    if task._extra:
        data["extra"] = dict(task._extra)
    return data


def _load_task(state: State, data: Mapping[str, Any], workers: Mapping[Any, Worker]) -> Task:
    task = Task(data["uuid"], state)
    task._born = next(state._seq)
    task._children = set(data["children"]) if data.get("children") else None
    fields = {name: data[name] for name in _TASK_FIELDS if name in data and name != "state"}
    set_fields(task, fields)
    task.state = data.get("state", task.state)
    hostname = data.get("worker")
    if hostname is not None:
        task.worker = workers.get(hostname) or Worker(hostname)
    for key, value in data.get("extra", {}).items():
        task._set_extra(key, value)
    return task
