"""Task state names, Celery's precedence table, and the two orderings of late events.

An *ordering* decides whether an event that arrives for a task is *late*: whether it
describes something that happened before the state the task is already in. A late event
never changes ``task.state``; its fields are still merged (see :class:`Ordering`).

* :data:`CELERY_ORDERING` (the default) is Celery 5.7's rule: a state is late when it ranks
  below the current one in :data:`PRECEDENCE`, except that ``RETRY`` on either side always
  moves forward. Custom states (``PROGRESS``, ``CANCELLED``...) rank between ``FAILURE``
  and ``REVOKED``, and ``REJECTED`` ranks below ``STARTED``, so a rejection that follows
  ``task-started`` is ignored (Flower #487).
* :data:`TERMINAL_ORDERING` lets final states win: ``SUCCESS``, ``FAILURE``, ``REVOKED`` and
  ``REJECTED`` outrank custom states, which outrank ``STARTED``, ``RECEIVED`` and
  ``PENDING``. Once a task is final only a higher final state replaces it (a late
  ``RETRY`` included). A rejection with ``requeue`` true is not final: like ``RETRY`` it
  lets the redelivery's events move the task forward. Late events do not overwrite the
  fields that describe the newest event (``timestamp``, ``clock``, ``type``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class _Stateful(Protocol):
    """What an ordering reads of a task: its current state (and ``requeue``, if set)."""

    state: str


PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
REJECTED = "REJECTED"
RETRY = "RETRY"
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED})

#: Celery's precedence, highest first; ``None`` stands for every custom state.
PRECEDENCE: tuple[str | None, ...] = (
    SUCCESS,
    FAILURE,
    None,
    REVOKED,
    STARTED,
    RECEIVED,
    REJECTED,
    RETRY,
    PENDING,
)

#: The state a standard task event puts a task in; other subjects give ``subject.upper()``.
TASK_EVENT_TO_STATE: Mapping[str, str] = {
    "sent": PENDING,
    "received": RECEIVED,
    "started": STARTED,
    "failed": FAILURE,
    "retried": RETRY,
    "succeeded": SUCCESS,
    "revoked": REVOKED,
    "rejected": REJECTED,
}

#: Fields a late event of a state may still contribute (Celery's ``merge_rules``).
MERGE_RULES: Mapping[str, tuple[str, ...]] = {
    RECEIVED: ("name", "args", "kwargs", "parent_id", "root_id", "retries", "eta", "expires"),
}

#: Fields that describe the newest event; :data:`TERMINAL_ORDERING` keeps them from late events.
ENVELOPE_FIELDS = frozenset(
    {"timestamp", "clock", "type", "hostname", "pid", "utcoffset", "local_received"}
)

_CELERY_RANKS = {state: rank for rank, state in enumerate(PRECEDENCE) if state is not None}
_CUSTOM_RANK = PRECEDENCE.index(None)


def precedence(state: str | None) -> int:
    """Celery's precedence index of ``state``: lower ranks higher, custom states are 2.

    >>> precedence(SUCCESS), precedence("PROGRESS"), precedence(STARTED)
    (0, 2, 4)
    """
    return _CELERY_RANKS.get(state, _CUSTOM_RANK)  # type: ignore[arg-type]


class Ordering:
    """Decides whether a task event is late; see the module documentation."""

    __slots__ = ("_custom_rank", "_ranks", "late_skip", "name")

    def __init__(
        self,
        name: str,
        ranks: Mapping[str, int],
        custom_rank: int,
        late_skip: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self._ranks = dict(ranks)
        self._custom_rank = custom_rank
        #: Fields never merged from a late event.
        self.late_skip = late_skip

    def rank(self, state: str) -> int:
        """The rank of ``state``; lower ranks higher."""
        return self._ranks.get(state, self._custom_rank)

    def is_late(self, task: _Stateful, new_state: str) -> bool:
        """Whether ``new_state`` happened before ``task``'s current state."""
        current = task.state
        if RETRY in (new_state, current):
            return False
        ranks, custom = self._ranks, self._custom_rank
        return ranks.get(new_state, custom) > ranks.get(current, custom)

    def __repr__(self) -> str:
        return f"<Ordering {self.name}>"


class _TerminalOrdering(Ordering):
    __slots__ = ()

    def is_late(self, task: _Stateful, new_state: str) -> bool:
        current = task.state
        ranks, custom = self._ranks, self._custom_rank
        requeued = current == REJECTED and bool(getattr(task, "requeue", False))
        if current in _FINAL_STATES and not requeued:
            return ranks.get(new_state, custom) > ranks.get(current, custom)
        if requeued or RETRY in (new_state, current):
            return False
        return ranks.get(new_state, custom) > ranks.get(current, custom)


_FINAL_STATES = frozenset({SUCCESS, FAILURE, REVOKED, REJECTED})

#: Celery 5.7's precedence rules (the default).
CELERY_ORDERING = Ordering("celery", _CELERY_RANKS, _CUSTOM_RANK)

_TERMINAL_PRECEDENCE = (
    SUCCESS,
    FAILURE,
    REVOKED,
    REJECTED,
    None,
    STARTED,
    RECEIVED,
    RETRY,
    PENDING,
)

#: Final states always win; late events keep the newest event's envelope fields.
TERMINAL_ORDERING: Ordering = _TerminalOrdering(
    "terminal",
    {state: rank for rank, state in enumerate(_TERMINAL_PRECEDENCE) if state is not None},
    _TERMINAL_PRECEDENCE.index(None),
    ENVELOPE_FIELDS,
)

ORDERINGS: Mapping[str, Ordering] = {"celery": CELERY_ORDERING, "terminal": TERMINAL_ORDERING}


def get_ordering(ordering: str | Ordering) -> Ordering:
    """Resolve an ordering given by name (``"celery"`` or ``"terminal"``) or as an object."""
    if isinstance(ordering, Ordering):
        return ordering
    try:
        return ORDERINGS[ordering]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown ordering {ordering!r}: expected one of {sorted(ORDERINGS)}"
        ) from None


def state_for_subject(subject: str) -> str:
    """The state a task event subject leads to: ``"progress"`` gives ``"PROGRESS"``."""
    return TASK_EVENT_TO_STATE.get(subject) or subject.upper()


__all__ = [
    "ALL_STATES",
    "CELERY_ORDERING",
    "EXCEPTION_STATES",
    "FAILURE",
    "IGNORED",
    "PENDING",
    "PRECEDENCE",
    "PROPAGATE_STATES",
    "READY_STATES",
    "RECEIVED",
    "REJECTED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "TASK_EVENT_TO_STATE",
    "TERMINAL_ORDERING",
    "UNREADY_STATES",
    "Ordering",
    "get_ordering",
    "precedence",
]
