"""Task records: the fields of a task's events, merged with Celery's rules for late events."""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from evcore.state.record import Record, set_fields
from evcore.state.states import (
    CELERY_ORDERING,
    MERGE_RULES,
    PENDING,
    READY_STATES,
    TASK_EVENT_TO_STATE,
    Ordering,
)

if TYPE_CHECKING:
    from evcore.state.worker import Worker

#: Subjects whose timestamp is kept in an attribute of the same name (``task.started``...).
STAMPED_SUBJECTS = frozenset(TASK_EVENT_TO_STATE)


class TaskOwner(Protocol):
    """What a task reads from the State that holds it (``task.cluster_state``)."""

    ordering: Ordering

    def find_task(self, uuid: str) -> Task | None:
        """The stored task ``uuid``, if any (not marked as recently used)."""

    def find_tasks(self, uuids: Iterable[str]) -> set[Task]:
        """The stored tasks among ``uuids``."""


class Task(Record):
    """A task as seen through its events; equal and hashed by ``uuid``.

    Holds Celery's 31 task fields (see :attr:`_fields`), the envelope of the newest merged
    event (``hostname``, ``pid``, ``utcoffset``, ``type``, ``local_received``), the other
    standard event fields (``queue``, ``requeue``, ``terminated``, ``signum``,
    ``expired``) and any custom field as an attribute (``task.current`` after a
    ``task-progress`` event carrying ``current``). ``children`` are kept as uuids and
    resolved against the state when read.
    """

    __slots__ = (
        "_children",
        "args",
        "born_seq",
        "client",
        "clock",
        "cluster_state",
        "eta",
        "exception",
        "exchange",
        "expired",
        "expires",
        "failed",
        "hostname",
        "kwargs",
        "local_received",
        "name",
        "parent_id",
        "pid",
        "queue",
        "received",
        "rejected",
        "requeue",
        "result",
        "retried",
        "retries",
        "revoked",
        "root_id",
        "routing_key",
        "runtime",
        "sent",
        "signum",
        "started",
        "state",
        "succeeded",
        "terminated",
        "timestamp",
        "traceback",
        "type",
        "utcoffset",
        "uuid",
        "worker",
    )

    _children: set[str] | None
    args: Any
    #: The holding State's sequence number when it stored this task: its time index
    #: ignores older entries, left by an earlier task of the same uuid (0: not stored).
    born_seq: int
    client: str | None
    clock: int | None
    cluster_state: TaskOwner | None
    eta: Any
    exception: Any
    exchange: Any
    expired: Any
    expires: Any
    failed: Any
    hostname: Any
    kwargs: Any
    local_received: Any
    name: Any
    parent_id: Any
    pid: Any
    queue: Any
    received: Any
    rejected: Any
    requeue: Any
    result: Any
    retried: Any
    retries: Any
    revoked: Any
    root_id: Any
    routing_key: Any
    runtime: Any
    sent: Any
    signum: Any
    started: Any
    state: str
    succeeded: Any
    terminated: Any
    timestamp: Any
    traceback: Any
    type: Any
    utcoffset: Any
    uuid: Any
    worker: Worker | None

    #: Celery's ``Task._fields``: what :meth:`as_dict` returns, in order.
    _fields: ClassVar[tuple[str, ...]] = (
        "uuid",
        "name",
        "state",
        "received",
        "sent",
        "started",
        "rejected",
        "succeeded",
        "failed",
        "retried",
        "revoked",
        "args",
        "kwargs",
        "eta",
        "expires",
        "retries",
        "worker",
        "result",
        "exception",
        "timestamp",
        "runtime",
        "traceback",
        "exchange",
        "routing_key",
        "clock",
        "client",
        "root",
        "root_id",
        "parent",
        "parent_id",
        "children",
    )
    #: What :meth:`info` shows by default.
    _info_fields: ClassVar[tuple[str, ...]] = (
        "args",
        "kwargs",
        "retries",
        "result",
        "eta",
        "runtime",
        "expires",
        "exception",
        "exchange",
        "routing_key",
        "root_id",
        "parent_id",
    )
    #: Fields kept from a late event of a state (Celery's ``merge_rules``).
    merge_rules: ClassVar[Mapping[str, tuple[str, ...]]] = MERGE_RULES

    _defaults: ClassVar[Mapping[str, Any]] = {
        **Record._defaults,
        **dict.fromkeys(__slots__),
        "state": PENDING,
        "clock": 0,
        "born_seq": 0,
    }
    _settable: ClassVar[frozenset[str]] = frozenset(__slots__) - {
        "born_seq",
        "_children",
        "cluster_state",
        "state",
        "worker",
    }

    def __init__(
        self,
        uuid: str | None = None,
        cluster_state: TaskOwner | None = None,
        children: Iterable[str] | None = None,
        **fields: Any,
    ) -> None:
        self.uuid = uuid
        self.cluster_state = cluster_state
        self.state = PENDING
        self.clock = 0
        self.name = None
        self.client = None
        self.worker = None
        self.parent_id = None
        self._children = set(children) if children else None
        if fields:
            if "state" in fields:
                self.state = fields.pop("state")
            if "worker" in fields:
                self.worker = fields.pop("worker")
            self._merge(fields)

    def event(
        self,
        type_: str,
        timestamp: float | None = None,
        local_received: float | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Merge one event of subject ``type_`` (``'succeeded'``, ``'progress'``...)."""
        ordering = self.cluster_state.ordering if self.cluster_state else CELERY_ORDERING
        state = TASK_EVENT_TO_STATE.get(type_) or type_.upper()
        stamp = type_ if type_ in STAMPED_SUBJECTS else None
        apply_event(self, stamp, state, timestamp, fields or {}, ordering)

    # -- derived values -------------------------------------------------------------------

    @property
    def id(self) -> Any:
        """The task id (its ``uuid``)."""
        return self.uuid

    @property
    def ready(self) -> bool:
        """Whether the task is in a ready state (``SUCCESS``, ``FAILURE``, ``REVOKED``)."""
        return bool(self.state in READY_STATES)

    @property
    def origin(self) -> str | None:
        """The client's hostname while no worker is known, else the worker's ``id``."""
        worker = self.worker
        if worker is None:
            return self.client
        return worker.id

    @property
    def parent(self) -> Task | None:
        """The parent task if it is in the state (looked up on every read)."""
        return self._lookup(self.parent_id)

    @property
    def root(self) -> Task | None:
        """The root task if it is in the state (looked up on every read)."""
        return self._lookup(getattr(self, "root_id", None))

    @property
    def children(self) -> set[Task]:
        """The child tasks that are in the state."""
        uuids = self._children
        state = self.cluster_state
        if not uuids or state is None:
            return set()
        return state.find_tasks(uuids)

    @property
    def child_ids(self) -> frozenset[str]:
        """The uuids of every child seen (including evicted ones not yet forgotten)."""
        return frozenset(self._children or ())

    def add_child(self, uuid: str) -> None:
        """Record the child task ``uuid``."""
        children = self._children
        if children is None:
            self._children = {uuid}
        else:
            children.add(uuid)

    def adopt_children(self, uuids: set[str]) -> None:
        """Record the children ``uuids`` (the set is kept, not copied)."""
        if self._children is None:
            self._children = uuids
        else:
            self._children |= uuids

    def discard_child(self, uuid: str) -> None:
        """Forget the child ``uuid`` if it is recorded."""
        if self._children:
            self._children.discard(uuid)

    def keep_children(self, uuids: Container[str]) -> None:
        """Forget every child not in ``uuids``."""
        if self._children:
            self._children = {uuid for uuid in self._children if uuid in uuids}

    def _lookup(self, uuid: str | None) -> Task | None:
        state = self.cluster_state
        # A parent or root id from a hostile event may be any JSON value: only a string
        # can name a task.
        if not uuid or uuid.__class__ is not str or state is None:
            return None
        return state.find_task(uuid)

    def info(
        self, fields: Iterable[str] | None = None, extra: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """The non-None values of ``fields`` (default :attr:`_info_fields`) and ``extra``."""
        names = [*(self._info_fields if fields is None else fields), *(extra or ())]
        info = {}
        for name in names:
            value = getattr(self, name, None)
            if value is not None:
                info[name] = value
        return info

    def as_dict(self) -> dict[str, Any]:
        """Celery's 31 fields, JSON-serialisable: the worker as its hostname, ids for links."""
        data: dict[str, Any] = {}
        for name in self._fields:
            if name == "worker":
                worker = self.worker
                data[name] = None if worker is None else worker.hostname
            elif name == "root":
                data[name] = getattr(self, "root_id", None)
            elif name == "parent":
                data[name] = self.parent_id
            elif name == "children":
                data[name] = [task.uuid for task in self.children]
            else:
                data[name] = getattr(self, name)
        return data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Task):
            return bool(self.uuid == other.uuid)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.uuid)

    def __repr__(self) -> str:
        return f"<Task: {self.name}({self.uuid}) {self.state} clock:{self.clock}>"


def apply_event(
    task: Task,
    stamp: str | None,
    state: str,
    timestamp: Any,
    fields: Mapping[str, Any],
    ordering: Ordering,
) -> bool:
    """Merge one event into ``task``: forward events move the state, late ones only add fields.

    ``stamp`` names the attribute that records the event's timestamp (``'started'``...), if
    any. Returns whether every field was merged (the envelope fields included).
    """
    if stamp is not None:
        setattr(task, stamp, timestamp)
    if ordering.is_late(task, state):
        return _merge_late(task, state, fields, ordering)
    set_fields(task, fields)
    task.state = state
    task.timestamp = timestamp
    return True


def _merge_late(task: Task, state: str, fields: Mapping[str, Any], ordering: Ordering) -> bool:
    """Merge a late event of ``state``: only the fields its merge rule keeps, or all but
    the ordering's ``late_skip``; the state does not move. Returns whether every field
    was merged."""
    keep = MERGE_RULES.get(state)
    if keep is not None:
        task._merge_only(fields, keep)
        return False
    if ordering.late_skip:
        task._merge_except(fields, ordering.late_skip)
        return False
    task._merge(fields)
    return True
