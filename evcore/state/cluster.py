"""The State: folds the event stream into live workers and tasks (Celery's ``State``)."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    ValuesView,
)
from itertools import count, islice
from typing import Any, ClassVar, Generic, TypeVar

from evcore.state import snapshot
from evcore.state.index import TaskIndex, TimeEntry, TimeIndex
from evcore.state.states import (
    READY_STATES,
    TASK_EVENT_TO_STATE,
    Ordering,
    get_ordering,
)
from evcore.state.task import Task, apply_event
from evcore.state.worker import HEARTBEAT_DRIFT_MAX, Worker, check_drift

K = TypeVar("K")
V = TypeVar("V")

#: What :meth:`State.event` returns for task and worker events.
EventResult = tuple[tuple[Any, bool], str]
#: A custom group handler: ``handler(subject, event)``.
GroupHandler = Callable[[str, Mapping[str, Any]], Any]

#: Integers beyond this cannot take part in float arithmetic on times.
_FLOAT_MAX = sys.float_info.max
#: Fields of ``task-sent``/``task-received`` whose string values repeat from task to task.
_REPEATED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "sent": ("name", "exchange", "routing_key", "queue"),
    "received": ("name",),
}
#: Bounds on small caches, so that junk input cannot grow them forever.
_MAX_KINDS = 1024
_MAX_STRINGS = 8192


class _Kind:
    """What the State needs to know about one event type; cached per type string."""

    __slots__ = (
        "counted",
        "group",
        "handle",
        "is_client",
        "repeated",
        "stamp",
        "state",
        "subject",
        "type",
    )

    def __init__(
        self, type_: str, handle: Callable[[State, Mapping[str, Any], _Kind], Any] | None
    ) -> None:
        group, _, subject = type_.partition("-")
        self.type = type_
        self.group = group
        self.subject = subject
        self.handle = handle
        self.state = TASK_EVENT_TO_STATE.get(subject) or subject.upper()
        self.stamp = subject if subject in TASK_EVENT_TO_STATE else None
        self.is_client = subject == "sent"
        self.counted = subject == "received"
        self.repeated = _REPEATED_FIELDS.get(subject, ())


class LRUMapping(MutableMapping[K, V], Generic[K, V]):
    """``state.workers`` and ``state.tasks``: a mapping in least-recently-used order.

    Reading an item (``[]`` or ``get``) marks it as recently used, as Celery's LRU cache
    does; the State's own event handling does not. Iteration works on a copy taken under
    the State's lock, so it is safe while another thread feeds events.
    """

    __slots__ = ("_data", "_evict", "_forget", "_lock")

    def __init__(
        self,
        data: OrderedDict[K, V],
        lock: threading.RLock,
        evict: Callable[[], None],
        forget: Callable[[K, V], None],
    ) -> None:
        self._data = data
        self._lock = lock
        self._evict = evict
        self._forget = forget

    @property
    def data(self) -> OrderedDict[K, V]:
        """The underlying ordered dict (no locking, no recency update)."""
        return self._data

    def __getitem__(self, key: K) -> V:
        with self._lock:
            value = self._data[key]
            self._data.move_to_end(key)
            return value

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            self._evict()

    def __delitem__(self, key: K) -> None:
        with self._lock:
            value = self._data.pop(key)
            self._forget(key, value)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        with self._lock:
            keys = list(self._data)
        return iter(keys)

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> ItemsView[K, V]:
        """A view of a copy taken under the lock."""
        with self._lock:
            return dict(self._data).items()

    def values(self) -> ValuesView[V]:
        """A view of a copy taken under the lock."""
        with self._lock:
            return dict(self._data).values()

    def __repr__(self) -> str:
        return f"<LRUMapping: {len(self._data)} items>"


class State:
    """Live workers and tasks built from events, with the semantics of Celery's ``State``.

    Feed it event dicts with :meth:`event` (it is a valid receiver handler, and safe to
    call from a receiver thread while other threads query). ``ordering`` selects how late
    events are merged: ``"celery"`` (default) or ``"terminal"``, see
    :mod:`evcore.state.states`.
    """

    #: Time-index entries kept per task allowed in memory, as in Celery.
    heap_multiplier: ClassVar[int] = 4

    def __init__(
        self,
        callback: Callable[[State, Mapping[str, Any]], Any] | None = None,
        *,
        max_workers_in_memory: int | None = 5000,
        max_tasks_in_memory: int | None = 10000,
        on_node_join: Callable[[Worker], Any] | None = None,
        on_node_leave: Callable[[Worker], Any] | None = None,
        ordering: str | Ordering = "celery",
    ) -> None:
        self.event_callback = callback
        self.on_node_join = on_node_join
        self.on_node_leave = on_node_leave
        self.ordering = get_ordering(ordering)
        #: Custom handlers by event group: ``handlers['custom'] = fn(subject, event)``.
        self.handlers: dict[str, GroupHandler] = {}
        self.event_count = 0
        self.task_count = 0
        #: Events refused by :meth:`event`, by reason (``'missing-uuid'``, ``'bad-clock'``...).
        self.rejected: dict[str, int] = {}
        #: Events known to be lost in transit, by sender hostname (see :meth:`record_loss`).
        self.lost_events: dict[str, int] = {}

        self._lock = threading.RLock()
        self._workers: OrderedDict[str, Worker] = OrderedDict()
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._pending: OrderedDict[str, set[str]] = OrderedDict()
        self._time = TimeIndex(None)
        self._seen_types: set[str] = set()
        self._strings: dict[str, str] = {}
        self._kinds: dict[Any, _Kind] = {}
        self._seq = count(1)
        self._evicted = {"workers": 0, "tasks": 0, "pending_links": 0}
        self.max_workers_in_memory = max_workers_in_memory
        self.max_tasks_in_memory = max_tasks_in_memory

        self.workers: LRUMapping[str, Worker] = LRUMapping(
            self._workers, self._lock, self._evict_workers, _ignore
        )
        self.tasks: LRUMapping[str, Task] = LRUMapping(
            self._tasks, self._lock, self._evict_tasks, self._forget_task
        )
        self.tasks_by_type = TaskIndex(self._tasks_of_type, self._resolve_list, self._locked)
        self.tasks_by_worker = TaskIndex(self._tasks_of_worker, self._resolve_list, self._locked)

    # -- limits and counters ----------------------------------------------------------------

    @property
    def max_tasks_in_memory(self) -> int | None:
        """Tasks kept before the least recently used is evicted (None or 0: no bound)."""
        return self._max_tasks

    @max_tasks_in_memory.setter
    def max_tasks_in_memory(self, value: int | None) -> None:
        self._max_tasks = value
        self._time.limit = value * self.heap_multiplier if value else None

    @property
    def evictions(self) -> dict[str, int]:
        """How many workers, tasks, time-index entries and pending parent links were evicted."""
        return {**self._evicted, "time_entries": self._time.dropped}

    # -- ingestion --------------------------------------------------------------------------

    def event(self, event: Mapping[str, Any]) -> EventResult | Any:
        """Apply one event; returns ``((obj, created), subject)`` for task and worker events.

        Custom group handlers return ``(handler(subject, event), subject)``; other groups,
        and events that are refused (counted in :attr:`rejected`), return None. The event
        dict is never modified.
        """
        with self._lock:
            self.event_count += 1
            callback = self.event_callback
            if callback is not None:
                callback(self, event)
            try:
                kind = self._kinds[event["type"]]
            except KeyError:
                found = self._classify(event)
                if found is None:
                    return None
                kind = found
            except TypeError:
                self._reject("not-an-event")
                return None
            handlers = self.handlers
            if handlers:
                handler = handlers.get(kind.group)
                if handler is not None:
                    return handler(kind.subject, event), kind.subject
            if kind.handle is None:
                return None
            return kind.handle(self, event, kind)

    def record_loss(self, hostname: str, count: int) -> None:
        """Count ``count`` events from ``hostname`` as lost in transit.

        Pass it as the Receiver's ``on_loss``, so the gaps its sequence check finds are
        known here: ``Receiver(url, handlers={"*": state.event}, on_loss=state.record_loss)``.
        """
        with self._lock:
            self.lost_events[hostname] = self.lost_events.get(hostname, 0) + count

    def _classify(self, event: Mapping[str, Any]) -> _Kind | None:
        if "type" not in event:
            self._reject("missing-type")
            return None
        type_ = event["type"]
        if type_.__class__ is not str:
            self._reject("bad-type")
            return None
        kind = _Kind(type_, _GROUP_HANDLERS.get(type_.partition("-")[0]))
        if len(self._kinds) < _MAX_KINDS:
            self._kinds[type_] = kind
        return kind

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def _intern(self, value: str) -> str:
        strings = self._strings
        known = strings.get(value)
        if known is not None:
            return known
        if len(strings) < _MAX_STRINGS:
            strings[value] = value
        return value

    def _worker_event(self, event: Mapping[str, Any], kind: _Kind) -> EventResult | None:
        reason = _check_worker_event(event)
        if reason is not None:
            self._reject(reason)
            return None
        hostname: str = event["hostname"]
        subject = kind.subject
        worker = self._workers.get(hostname)
        created = False
        if worker is None:
            if subject == "offline":
                worker = Worker(hostname)
            else:
                worker = self._add_worker(hostname)
                created = True
        worker.event(subject, event["timestamp"], event["local_received"], event)
        if self.on_node_join is not None and (created or subject == "online"):
            self.on_node_join(worker)
        if self.on_node_leave is not None and subject == "offline":
            self.on_node_leave(worker)
            self._workers.pop(hostname, None)
        return (worker, created), subject

    def _task_event(self, event: Mapping[str, Any], kind: _Kind) -> EventResult | None:
        uuid: Any
        hostname: Any
        timestamp: Any
        local_received: Any
        clock: Any
        try:
            uuid = event["uuid"]
            hostname = event["hostname"]
            timestamp = event["timestamp"]
            local_received = event["local_received"]
            clock = event["clock"]
        except KeyError as exc:
            self._reject(f"missing-{exc.args[0]}")
            return None
        if uuid.__class__ is not str or not uuid:
            self._reject("bad-uuid")
            return None
        if hostname.__class__ is not str:
            self._reject("bad-hostname")
            return None
        if timestamp.__class__ is not float and _not_a_number(timestamp):
            self._reject("bad-timestamp")
            return None
        if (
            local_received is not None
            and local_received.__class__ is not float
            and _not_a_number(local_received)
        ):
            self._reject("bad-local_received")
            return None
        if clock is not None and clock.__class__ is not int:
            self._reject("bad-clock")
            return None

        seq = next(self._seq)
        task = self._tasks.get(uuid)
        created = task is None
        if task is None:
            task = self._add_task(uuid, seq)
        prev_name, prev_client, prev_worker = task.name, task.client, task.worker
        if kind.is_client:
            hostname = task.client = origin = self._intern(hostname)
        else:
            worker = self._workers.get(hostname)
            if worker is None:
                worker = self._add_worker(hostname)
            task.worker = worker
            if local_received and timestamp:
                if abs(local_received - timestamp) > HEARTBEAT_DRIFT_MAX:
                    check_drift(hostname, local_received, timestamp)
                worker.beat(local_received)
            origin = worker.id
            # The copy stored with the worker (see _add_worker), shared by its tasks.
            hostname = self._strings.get(hostname, hostname)

        self._time.add((clock, origin, seq, uuid) if clock else (0, timestamp, seq, uuid))
        if kind.counted:
            self.task_count += 1
        if apply_event(task, kind.stamp, kind.state, timestamp, event, self.ordering):
            # Keep one copy of strings that repeat across tasks instead of one per task.
            task.type = kind.type
            task.hostname = hostname
        if kind.repeated:
            self._share_strings(task, kind.repeated)

        name = task.name
        if name.__class__ is str and (
            name != prev_name or task.client is not prev_client or task.worker is not prev_worker
        ):
            self._reindex(task, prev_name, prev_client, prev_worker)
        if task.parent_id:
            self._link_parent(task)
        if self._pending:
            waiting = self._pending.pop(uuid, None)
            if waiting:
                task.adopt_children(waiting)
        return (task, created), kind.subject

    def _share_strings(self, task: Task, fields: tuple[str, ...]) -> None:
        strings = self._strings
        for field in fields:
            value = getattr(task, field)
            if value.__class__ is str:
                known = strings.get(value)
                setattr(task, field, self._intern(value) if known is None else known)

    # -- storage, eviction and indexes ------------------------------------------------------

    def _add_task(self, uuid: str, seq: int) -> Task:
        task = Task(uuid, self)
        task.born_seq = seq
        self._tasks[uuid] = task
        self._evict_tasks()
        return task

    def _add_worker(self, hostname: str) -> Worker:
        hostname = self._intern(hostname)
        worker = self._workers[hostname] = Worker(hostname)
        self._evict_workers()
        return worker

    def _evict_tasks(self) -> None:
        limit = self._max_tasks
        tasks = self._tasks
        while limit and len(tasks) > limit:
            uuid, task = tasks.popitem(last=False)
            self._forget_task(uuid, task)
            self._evicted["tasks"] += 1

    def _evict_workers(self) -> None:
        limit = self.max_workers_in_memory
        while limit and len(self._workers) > limit:
            self._workers.popitem(last=False)
            self._evicted["workers"] += 1

    def _forget_task(self, uuid: str, task: Task) -> None:
        """Remove a task that left ``tasks`` from the indexes and from its parent's children."""
        name = task.name
        if name.__class__ is str:
            self.tasks_by_type._discard(name, uuid)
            for host in _hosts_of(task.client, _hostname_of(task.worker)):
                self.tasks_by_worker._discard(host, uuid)
        parent_id = task.parent_id
        if parent_id.__class__ is str:
            parent = self._tasks.get(parent_id)
            if parent is not None:
                parent.discard_child(uuid)
            waiting = self._pending.get(parent_id)
            if waiting is not None:
                waiting.discard(uuid)
                if not waiting:
                    del self._pending[parent_id]

    def _reindex(
        self, task: Task, prev_name: Any, prev_client: str | None, prev_worker: Worker | None
    ) -> None:
        """Move a named task to the index keys of its current name, client and worker."""
        uuid: str = task.uuid
        name: str = task.name
        was_indexed = prev_name.__class__ is str
        if name != prev_name:
            if was_indexed:
                self.tasks_by_type._discard(prev_name, uuid)
            _index_add(self.tasks_by_type._sets, name, uuid)
            self._seen_types.add(name)
        worker = task.worker
        new = (task.client, None if worker is None else worker.hostname)
        sets = self.tasks_by_worker._sets
        if was_indexed:
            old = (prev_client, None if prev_worker is None else prev_worker.hostname)
            for host in old:
                if host is not None and host not in new:
                    self.tasks_by_worker._discard(host, uuid)
        else:
            old = (None, None)
        for host in new:
            if host is not None and host not in old:
                _index_add(sets, host, uuid)

    def _link_parent(self, task: Task) -> None:
        parent_id = task.parent_id
        if parent_id.__class__ is not str:
            return
        uuid: str = task.uuid
        parent = self._tasks.get(parent_id)
        if parent is not None:
            self._tasks.move_to_end(parent_id)
            parent.add_child(uuid)
            return
        pending = self._pending
        waiting = pending.get(parent_id)
        if waiting is None:
            pending[parent_id] = {uuid}
            limit = self._max_tasks
            while limit and len(pending) > limit:
                pending.popitem(last=False)
                self._evicted["pending_links"] += 1
        else:
            pending.move_to_end(parent_id)
            waiting.add(uuid)

    # -- lookups used by Task and the indexes -----------------------------------------------

    def find_task(self, uuid: str) -> Task | None:
        """The stored task ``uuid``, if any; unlike ``tasks[uuid]`` it does not mark the
        task as recently used (a task's ``parent``, ``root`` and ``children`` read this)."""
        return self._tasks.get(uuid)

    def find_tasks(self, uuids: Iterable[str]) -> set[Task]:
        """The stored tasks among ``uuids`` (see :meth:`find_task`)."""
        return set(self._resolve_list(iter(list(uuids))))

    def _resolve_list(self, uuids: Iterator[str]) -> list[Task]:
        tasks = self._tasks
        found = []
        for uuid in uuids:
            task = tasks.get(uuid)
            if task is not None:
                found.append(task)
        return found

    def _locked(self, fun: Callable[[], V]) -> V:
        with self._lock:
            return fun()

    # -- queries ----------------------------------------------------------------------------

    def get_or_create_worker(self, hostname: str, **kwargs: Any) -> tuple[Worker, bool]:
        """The worker named ``hostname`` and whether it was created; ``kwargs`` are set on it."""
        with self._lock:
            worker = self._workers.get(hostname)
            if worker is not None:
                self._workers.move_to_end(hostname)
                if kwargs:
                    worker.update(kwargs)
                return worker, False
            worker = self._workers[hostname] = Worker(hostname, **kwargs)
            self._evict_workers()
            return worker, True

    def get_or_create_task(self, uuid: str) -> tuple[Task, bool]:
        """The task ``uuid`` and whether it was created (a created task is in no index yet)."""
        with self._lock:
            task = self._tasks.get(uuid)
            if task is not None:
                self._tasks.move_to_end(uuid)
                return task, False
            return self._add_task(uuid, next(self._seq)), True

    def itertasks(self, limit: int | None = None) -> Iterator[tuple[str, Task]]:
        """``(uuid, task)`` pairs, least recently used first."""
        with self._lock:
            items = list(islice(self._tasks.items(), limit or None))
        return iter(items)

    def tasks_by_time(
        self, limit: int | None = None, reverse: bool = True
    ) -> Iterator[tuple[str, Task]]:
        """``(uuid, task)`` pairs ordered by the time of their events, newest first.

        A task is placed by its newest event (by its oldest with ``reverse=False``).
        ``limit`` caps the number of tasks yielded.
        """
        with self._lock:
            entries = self._time.entries()
        if reverse:
            entries.reverse()
        return islice(self._walk(entries), limit or None)

    tasks_by_timestamp = tasks_by_time

    def _walk(self, entries: list[TimeEntry]) -> Iterator[tuple[str, Task]]:
        tasks = self._tasks
        seen: set[str] = set()
        for entry in entries:
            uuid = entry[3]
            if uuid in seen:
                continue
            task = tasks.get(uuid)
            if task is None or entry[2] < task.born_seq:
                continue
            seen.add(uuid)
            yield uuid, task

    def _tasks_of_type(
        self, name: str, limit: int | None = None, reverse: bool = True
    ) -> Iterator[tuple[str, Task]]:
        found = (
            (uuid, task) for uuid, task in self.tasks_by_time(reverse=reverse) if task.name == name
        )
        return islice(found, limit or None)

    def _tasks_of_worker(
        self, hostname: str, limit: int | None = None, reverse: bool = True
    ) -> Iterator[tuple[str, Task]]:
        found = (
            (uuid, task)
            for uuid, task in self.tasks_by_time(reverse=reverse)
            if hostname in (task.client, _hostname_of(task.worker))
        )
        return islice(found, limit or None)

    def task_types(self) -> list[str]:
        """Every task name seen, sorted."""
        with self._lock:
            return sorted(self._seen_types)

    def alive_workers(self) -> Iterator[Worker]:
        """The workers whose heartbeats have not expired."""
        with self._lock:
            workers = list(self._workers.values())
        return (worker for worker in workers if worker.alive)

    def rebuild_taskheap(self) -> None:
        """Rebuild the time index with one entry per task, from its clock and timestamp."""
        with self._lock:
            entries: list[TimeEntry] = []
            for uuid, task in self._tasks.items():
                clock, origin = task.clock, task.origin
                if clock and clock.__class__ is int:
                    entries.append((clock, origin or "", task.born_seq, uuid))
                else:
                    entries.append((0, task.timestamp or 0, task.born_seq, uuid))
            self._time.replace(entries)

    # -- clearing ---------------------------------------------------------------------------

    def freeze_while(
        self, fun: Callable[..., V], *args: Any, clear_after: bool = False, **kwargs: Any
    ) -> V:
        """Run ``fun(*args, **kwargs)`` with ingestion paused; clear afterwards if asked."""
        with self._lock:
            try:
                return fun(*args, **kwargs)
            finally:
                if clear_after:
                    self._clear()

    def clear_tasks(self, ready: bool = True) -> None:
        """Forget tasks: with ``ready`` only those in a ready state, else all of them."""
        with self._lock:
            self._clear_tasks(ready)

    def clear(self, ready: bool = True) -> None:
        """Forget workers and tasks (see :meth:`clear_tasks`) and zero the event counters."""
        with self._lock:
            self._clear(ready)

    def _clear(self, ready: bool = True) -> None:
        self._workers.clear()
        self._clear_tasks(ready)
        self.event_count = 0
        self.task_count = 0

    def _clear_tasks(self, ready: bool) -> None:
        kept = [
            (uuid, task)
            for uuid, task in self._tasks.items()
            if ready and task.state not in READY_STATES
        ]
        self._tasks.clear()
        self._tasks.update(kept)
        self.tasks_by_type._clear()
        self.tasks_by_worker._clear()
        for _uuid, task in kept:
            task.keep_children(self._tasks)
            if task.name.__class__ is str:
                self._reindex(task, None, None, None)
        for parent_id, waiting in list(self._pending.items()):
            waiting.intersection_update(self._tasks)
            if not waiting:
                del self._pending[parent_id]
        self._time.replace([entry for entry in self._time.entries() if entry[3] in self._tasks])

    # -- snapshots --------------------------------------------------------------------------

    def to_json(self) -> str:
        """A JSON snapshot of workers, tasks, links and counters (no pickle)."""
        return snapshot.to_json(self)

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any], **kwargs: Any) -> State:
        """A State restored from :meth:`to_json` output.

        ``kwargs`` are constructor arguments (callbacks, and limits that override the
        snapshot's); the limits are applied to what is restored, oldest evicted first.
        """
        parsed = snapshot.parse(data)
        options: dict[str, Any] = {"ordering": parsed.get("ordering", "celery")}
        options.update(parsed.get("limits", {}))
        options.update(kwargs)
        state = cls(**options)
        state.import_contents(snapshot.contents(parsed))
        return state

    def export_contents(self) -> snapshot.Contents:
        """Workers, tasks, links and counters as they are now (what a snapshot holds)."""
        with self._lock:
            return snapshot.Contents(
                ordering=self.ordering.name,
                max_workers_in_memory=self.max_workers_in_memory,
                max_tasks_in_memory=self.max_tasks_in_memory,
                event_count=self.event_count,
                task_count=self.task_count,
                task_types=set(self._seen_types),
                workers=list(self._workers.values()),
                tasks=list(self._tasks.values()),
                pending_children={
                    parent: set(children) for parent, children in self._pending.items()
                },
            )

    def import_contents(self, contents: snapshot.Contents) -> None:
        """Fill this empty State from ``contents``, applying its own limits (the least
        recently used go first) and rebuilding the indexes."""
        with self._lock:
            self.event_count = contents.event_count
            self.task_count = contents.task_count
            self._seen_types.update(contents.task_types)
            for worker in contents.workers:
                self._workers[str(worker.hostname)] = worker
            self._evict_workers()
            for task in contents.tasks:
                task.cluster_state = self
                task.born_seq = next(self._seq)
                self._tasks[task.uuid] = task
                self._evict_tasks()
            for task in self._tasks.values():
                task.keep_children(self._tasks)
                if task.name.__class__ is str:
                    self._reindex(task, None, None, None)
            for parent_id, children in contents.pending_children.items():
                self._pending[parent_id] = set(children)
            limit = self.max_tasks_in_memory
            while limit and len(self._pending) > limit:
                self._pending.popitem(last=False)
            self.rebuild_taskheap()

    def __repr__(self) -> str:
        return f"<State: events={self.event_count} tasks={self.task_count}>"


def _check_worker_event(event: Mapping[str, Any]) -> str | None:
    """Why a worker event cannot be applied, or None."""
    for key in ("hostname", "timestamp", "local_received"):
        if key not in event:
            return f"missing-{key}"
    if event["hostname"].__class__ is not str:
        return "bad-hostname"
    if _not_a_number(event["timestamp"]):
        return "bad-timestamp"
    local_received = event["local_received"]
    if local_received is not None and _not_a_number(local_received):
        return "bad-local_received"
    if _not_a_number(event.get("freq", 60)):
        return "bad-freq"
    return None


def _not_a_number(value: Any) -> bool:
    """Whether ``value`` cannot be a time or an interval: neither a float nor an integer
    within the range of floats (bools and huge integers are refused)."""
    cls = value.__class__
    return cls is not float and (cls is not int or not -_FLOAT_MAX <= value <= _FLOAT_MAX)


def _index_add(sets: dict[str, set[str]], key: str, uuid: str) -> None:
    uuids = sets.get(key)
    if uuids is None:
        sets[key] = {uuid}
    else:
        uuids.add(uuid)


def _hostname_of(worker: Worker | None) -> str | None:
    return None if worker is None else worker.hostname


def _hosts_of(*hosts: str | None) -> set[str]:
    return {host for host in hosts if host is not None}


def _ignore(key: Any, value: Any) -> None:
    """Nothing to clean up when a worker is removed."""


_GROUP_HANDLERS: Mapping[str, Callable[[State, Mapping[str, Any], _Kind], Any]] = {
    "task": State._task_event,
    "worker": State._worker_event,
}
