"""Combine the States of a group of monitors, each holding some partitions, into one.

Members of one consumer group own disjoint partitions; every event of a task is in its
task's partition, and worker events are in every partition. So the tasks of the members'
States are disjoint, their workers are copies of the same records, and a parent task's
children whose events landed in another partition wait in that member's
``pending_children``. :func:`merge_snapshots` joins snapshots (:mod:`evcore.state.snapshot`)
accordingly; restore the result into a State to query the whole cluster from one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from evcore.state.snapshot import FORMAT, VERSION, parse


def _heartbeat_of(worker: Mapping[str, Any]) -> float:
    heartbeats = worker.get("heartbeats") or [0.0]
    return float(heartbeats[-1])


def merge_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One snapshot of the union of several members' snapshots.

    Tasks are taken from the member holding them (the one that saw the most of a task wins
    should two hold it, as around a takeover); for a worker, the record with the latest
    heartbeat. Children are attached to their parent whichever member holds each (by the
    child's ``parent_id``, and a member's waiting children). ``event_count`` is the sum,
    so worker events count once per member that applied them.
    """
    parsed = [parse(snapshot) for snapshot in snapshots]
    if not parsed:
        raise ValueError("nothing to merge")
    workers: dict[str, dict[str, Any]] = {}
    detached: dict[str, dict[str, Any]] = {}
    tasks: dict[str, dict[str, Any]] = {}
    pending: dict[str, set[str]] = {}
    task_types: set[str] = set()
    event_count = task_count = 0
    for data in parsed:
        counters = data.get("counters", {})
        event_count += int(counters.get("event_count", 0))
        task_count += int(counters.get("task_count", 0))
        task_types.update(data.get("task_types", ()))
        for into, key in ((workers, "workers"), (detached, "detached_workers")):
            for worker in data.get(key, ()):
                known = into.get(worker["hostname"])
                if known is None or _heartbeat_of(worker) > _heartbeat_of(known):
                    into[worker["hostname"]] = dict(worker)
        for task in data.get("tasks", ()):
            known = tasks.get(task["uuid"])
            if known is None or len(task) > len(known):
                tasks[task["uuid"]] = dict(task)
        for parent, children in data.get("pending_children", {}).items():
            pending.setdefault(parent, set()).update(children)
    # A child names its parent: link it wherever the parent is, whichever member held it.
    for task in tasks.values():
        parent_id = task.get("parent_id")
        if isinstance(parent_id, str) and parent_id in tasks:
            pending.setdefault(parent_id, set()).add(task["uuid"])
    for parent, children in list(pending.items()):
        task = tasks.get(parent)
        if task is not None:
            task["children"] = sorted(set(task.get("children", ())) | children)
            del pending[parent]
    first = parsed[0]
    return {
        "format": FORMAT,
        "version": VERSION,
        "ordering": first.get("ordering", "celery"),
        "limits": dict(first.get("limits", {})),
        "counters": {"event_count": event_count, "task_count": task_count},
        "task_types": sorted(task_types),
        "workers": list(workers.values()),
        "detached_workers": [w for name, w in detached.items() if name not in workers],
        "tasks": list(tasks.values()),
        "pending_children": {parent: sorted(kids) for parent, kids in pending.items()},
    }
