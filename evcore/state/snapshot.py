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

The State hands its contents over as :class:`Contents` (``State.export_contents()``) and
takes them back with ``State.import_contents()``; this module only converts between
:class:`Contents` and the JSON form, so it needs no State internals and does not import
the State.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from evcore.codec import dumps, loads
from evcore.state.record import set_fields
from evcore.state.task import Task
from evcore.state.worker import Worker

FORMAT = "evcore.state"
VERSION = 1

_WORKER_FIELDS = tuple(sorted(Worker._settable - {"hostname"}))
_TASK_FIELDS = tuple(sorted(Task._settable | {"state"}))


class SnapshotError(ValueError):
    """A snapshot that is not an evcore State snapshot, or of an unknown version."""


@dataclass
class Contents:
    """Everything a snapshot holds, as the State's own objects."""

    ordering: str
    max_workers_in_memory: int | None
    max_tasks_in_memory: int | None
    event_count: int = 0
    task_count: int = 0
    task_types: Iterable[str] = ()
    #: Stored workers, least recently used first.
    workers: list[Worker] = field(default_factory=list)
    #: Stored tasks, least recently used first (each task's ``worker`` may be a worker
    #: that is not stored).
    tasks: list[Task] = field(default_factory=list)
    #: Children seen before their parent: parent uuid -> child uuids.
    pending_children: Mapping[str, Iterable[str]] = field(default_factory=dict)


class Exportable(Protocol):
    """What :func:`snapshot` needs of a State."""

    def export_contents(self) -> Contents:
        """The contents, copied consistently (under the State's lock)."""


def to_json(state: Exportable) -> str:
    """The state as JSON text (see the module documentation for the format)."""
    return dumps(snapshot(state)).decode("utf-8")


def snapshot(state: Exportable) -> dict[str, Any]:
    """The state as a JSON-serialisable dict."""
    contents = state.export_contents()
    stored = {str(worker.hostname): worker for worker in contents.workers}
    detached: dict[str, Worker] = {}
    for task in contents.tasks:
        worker = task.worker
        if worker is not None and stored.get(str(worker.hostname)) is not worker:
            detached[str(worker.hostname)] = worker
    return {
        "format": FORMAT,
        "version": VERSION,
        "ordering": contents.ordering,
        "limits": {
            "max_workers_in_memory": contents.max_workers_in_memory,
            "max_tasks_in_memory": contents.max_tasks_in_memory,
        },
        "counters": {"event_count": contents.event_count, "task_count": contents.task_count},
        "task_types": sorted(contents.task_types),
        "workers": [_dump_worker(worker) for worker in contents.workers],
        "detached_workers": [_dump_worker(worker) for worker in detached.values()],
        "tasks": [_dump_task(task) for task in contents.tasks],
        "pending_children": {
            parent: sorted(children) for parent, children in contents.pending_children.items()
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


def contents(data: Mapping[str, Any]) -> Contents:
    """The :class:`Contents` of a parsed snapshot, for ``State.import_contents()``."""
    limits = data.get("limits", {})
    counters = data.get("counters", {})
    workers: dict[Any, Worker] = {}
    for fields in data.get("detached_workers", ()):
        worker = _load_worker(fields)
        workers[worker.hostname] = worker
    stored = []
    for fields in data.get("workers", ()):
        worker = _load_worker(fields)
        workers[worker.hostname] = worker
        stored.append(worker)
    return Contents(
        ordering=data.get("ordering", "celery"),
        max_workers_in_memory=limits.get("max_workers_in_memory"),
        max_tasks_in_memory=limits.get("max_tasks_in_memory"),
        event_count=int(counters.get("event_count", 0)),
        task_count=int(counters.get("task_count", 0)),
        task_types=data.get("task_types", ()),
        workers=stored,
        tasks=[_load_task(fields, workers) for fields in data.get("tasks", ())],
        pending_children=data.get("pending_children", {}),
    )


def _dump_worker(worker: Worker) -> dict[str, Any]:
    data: dict[str, Any] = {"hostname": worker.hostname, "heartbeats": list(worker.heartbeats)}
    for name in _WORKER_FIELDS:
        data[name] = getattr(worker, name)
    extra = worker.extra_fields
    if extra:
        data["extra"] = extra
    return data


def _load_worker(data: Mapping[str, Any]) -> Worker:
    worker = Worker(data["hostname"], heartbeats=list(data.get("heartbeats", ())))
    set_fields(worker, {name: data[name] for name in _WORKER_FIELDS if name in data})
    set_fields(worker, data.get("extra", {}))
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
    children = task.child_ids
    if children:
        data["children"] = sorted(children)
    extra = task.extra_fields
    if extra:
        data["extra"] = extra
    return data


def _load_task(data: Mapping[str, Any], workers: Mapping[Any, Worker]) -> Task:
    task = Task(data["uuid"], children=data.get("children"))
    fields = {name: data[name] for name in _TASK_FIELDS if name in data and name != "state"}
    set_fields(task, fields)
    task.state = data.get("state", task.state)
    hostname = data.get("worker")
    if hostname is not None:
        task.worker = workers.get(hostname) or Worker(hostname)
    set_fields(task, data.get("extra", {}))
    return task
