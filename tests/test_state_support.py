"""Feed the same events to Celery's State and evcore's, and compare what they hold.

Shared by the differential tests (Celery is a test-only dependency). It holds no tests;
its name only puts it among the State test modules.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from typing import Any

from celery.events.state import State as CeleryState

from evcore.state import State

#: Attributes of Celery's objects that are internal, not fields.
_CELERY_INTERNALS = {"cluster_state", "children", "_serializer_handlers", "parent", "root", "event"}


def feed(events: Iterable[Mapping[str, Any]], **limits: Any) -> tuple[CeleryState, State]:
    """Both states after the same stream (each gets its own copy of each event)."""
    celery_state = CeleryState(**limits)
    ours = State(**limits)
    for event in events:
        celery_state.event(dict(event))
        ours.event(dict(event))
    gc.collect()  # Celery's evicted tasks sit in reference cycles until collected
    return celery_state, ours


def task_fields(task: Any) -> dict[str, Any]:
    """Every field Celery keeps on a task: its 31 fields plus copied event fields."""
    fields = {name: getattr(task, name, None) for name in type(task)._fields}
    fields.update({k: v for k, v in vars(task).items() if k not in _CELERY_INTERNALS})
    worker = fields["worker"]
    fields["worker"] = None if worker is None else worker.hostname
    fields["children"] = sorted(child.uuid for child in task.children)
    fields["parent"] = fields["root"] = None
    return fields


def worker_fields(worker: Any) -> dict[str, Any]:
    """Every field Celery keeps on a worker, plus the derived values."""
    fields = {name: getattr(worker, name) for name in type(worker)._fields}
    fields.update({k: v for k, v in vars(worker).items() if k not in _CELERY_INTERNALS})
    fields["id"] = worker.id
    fields["alive"] = worker.alive
    fields["heartbeats"] = list(worker.heartbeats)
    return fields


def assert_same(celery_state: CeleryState, ours: State, time_order: bool = True) -> None:
    """Every task and worker field, the LRU orders, counters and (by default) time order."""
    assert list(celery_state.tasks.data) == list(ours.tasks.data)
    for uuid, expected in celery_state.tasks.data.items():
        want = task_fields(expected)
        got = ours.tasks.data[uuid]
        have = {name: getattr(got, name, None) for name in want}
        have["worker"] = None if got.worker is None else got.worker.hostname
        have["children"] = sorted(child.uuid for child in got.children)
        have["parent"] = have["root"] = None
        assert have == want, uuid
        assert got.info() == expected.info()
        assert got.origin == expected.origin
        assert got.ready == expected.ready
    assert list(celery_state.workers.data) == list(ours.workers.data)
    for hostname, expected in celery_state.workers.data.items():
        want = worker_fields(expected)
        got = ours.workers.data[hostname]
        have = {name: getattr(got, name, None) for name in want}
        have["heartbeats"] = list(got.heartbeats)
        assert have == want, hostname
    assert celery_state.event_count == ours.event_count
    assert celery_state.task_count == ours.task_count
    assert celery_state.task_types() == ours.task_types()
    if time_order:
        assert [u for u, _ in celery_state.tasks_by_time()] == [u for u, _ in ours.tasks_by_time()]
        assert [u for u, _ in celery_state.tasks_by_time(reverse=False)] == [
            u for u, _ in ours.tasks_by_time(reverse=False)
        ]
    assert_indexes_cover(celery_state, ours)


def assert_indexes_cover(celery_state: CeleryState, ours: State) -> None:
    """evcore's indexes hold what Celery's hold (for retained tasks), and follow evcore's rule.

    The rule (docs/compat.md): a named task is in ``tasks_by_type[name]`` and in
    ``tasks_by_worker[h]`` for ``h`` its client's and its worker's hostname.
    """
    retained = set(celery_state.tasks.data)
    for name, tasks in celery_state.tasks_by_type.items():
        celery_uuids = {t.uuid for t in tasks} & retained
        assert celery_uuids <= ours.tasks_by_type[name].uuids, name
    for host, tasks in celery_state.tasks_by_worker.items():
        celery_uuids = {t.uuid for t in tasks} & retained
        assert celery_uuids <= ours.tasks_by_worker[host].uuids, host
    by_type: dict[str, set[str]] = {}
    by_host: dict[str, set[str]] = {}
    for uuid, task in ours.tasks.data.items():
        if isinstance(task.name, str):
            by_type.setdefault(task.name, set()).add(uuid)
            for host in (task.client, task.worker and task.worker.hostname):
                if host is not None:
                    by_host.setdefault(host, set()).add(uuid)
    assert {k: ours.tasks_by_type[k].uuids for k in ours.tasks_by_type} == by_type
    assert {k: ours.tasks_by_worker[k].uuids for k in ours.tasks_by_worker} == by_host
