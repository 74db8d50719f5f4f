"""Worker liveness (online, late, offline) and tasks possibly lost with their worker.

Everything here is computed on the receiver's clock (``local_received``), never on the
sender's, so a worker whose clock drifts is judged by when its events arrived.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from evcore.state.states import READY_STATES

if TYPE_CHECKING:
    from evcore.state.cluster import State
    from evcore.state.task import Task
    from evcore.state.worker import Worker

ONLINE = "online"
LATE = "late"
OFFLINE = "offline"

#: Why a task was marked possibly lost.
SILENT_WORKER = "worker-silent"
STREAM_GAP = "stream-gap"


@dataclass
class LivenessPolicy:
    """Windows of worker liveness and task loss.

    A worker is *late* once ``late_after`` heartbeat intervals (its own ``freq``) passed
    since its last event, and *offline* after ``offline_after`` intervals or at its
    ``worker-offline`` event. An offline worker is purged from the State after
    ``purge_after`` seconds (None: never). An unfinished task on a worker that has been
    offline, or whose stream had a gap after the task's last event, for ``lost_after``
    seconds is marked possibly lost.
    """

    late_after: float = 1.25
    offline_after: float = 2.0
    purge_after: float | None = 3600.0
    lost_after: float = 10.0
    #: Heartbeat interval assumed for a worker that never said its ``freq``.
    default_freq: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.late_after <= self.offline_after:
            raise ValueError("liveness windows need 0 < late_after <= offline_after")
        if self.lost_after < 0 or (self.purge_after is not None and self.purge_after < 0):
            raise ValueError("lost_after and purge_after cannot be negative")


@dataclass(frozen=True)
class WorkerLiveness:
    """One worker's liveness at a moment."""

    status: str
    #: ``local_received`` of the worker's newest event, or None if it sent none.
    last_seen: float | None
    #: Seconds since ``last_seen`` (None if never seen).
    seen_ago: float | None
    #: Seconds past the expected next heartbeat (0 while on time).
    lateness: float
    #: The worker's heartbeat interval used for the windows.
    freq: float


def _freq_of(worker: Worker, policy: LivenessPolicy) -> float:
    freq = worker.freq
    if isinstance(freq, int | float) and 0 < freq < 86_400:
        return float(freq)
    return policy.default_freq


def last_seen(worker: Worker) -> float | None:
    """When the worker's newest event arrived, on the receiver's clock."""
    beats = worker.heartbeats
    received = worker.local_received
    newest = beats[-1] if beats else None
    if isinstance(received, int | float) and (newest is None or received > newest):
        return float(received)
    return newest


def liveness(worker: Worker, policy: LivenessPolicy, now: float | None = None) -> WorkerLiveness:
    """The worker's status: ``online``, ``late`` or ``offline``."""
    now = time.time() if now is None else now
    freq = _freq_of(worker, policy)
    seen = last_seen(worker)
    if seen is None:
        return WorkerLiveness(OFFLINE, None, None, 0.0, freq)
    ago = max(0.0, now - seen)
    lateness = max(0.0, ago - freq)
    if worker.type == "worker-offline" or ago > freq * policy.offline_after:
        status = OFFLINE
    elif ago > freq * policy.late_after:
        status = LATE
    else:
        status = ONLINE
    return WorkerLiveness(status, seen, ago, lateness, freq)


@dataclass
class LossTracker:
    """Unfinished tasks per worker, so the ones left on a silent worker can be found.

    Feed it every applied task event with :meth:`task_event` and every stream gap with
    :meth:`stream_gap`; :meth:`sweep` marks what has been lost long enough.
    """

    policy: LivenessPolicy = field(default_factory=LivenessPolicy)
    #: Tasks marked possibly lost: uuid -> reason.
    lost: dict[str, str] = field(default_factory=dict)
    #: Tasks marked possibly lost since the start, by reason.
    marked: dict[str, int] = field(default_factory=dict)
    #: Tasks marked lost that later sent an event (and are unmarked).
    recovered: int = 0
    _unfinished: dict[str, dict[str, None]] = field(default_factory=dict)
    _gaps: dict[str, float] = field(default_factory=dict)

    def task_event(self, task: Task) -> None:
        """Track ``task`` after one of its events was applied."""
        uuid = task.uuid
        if self.lost and uuid in self.lost:
            del self.lost[uuid]
            self.recovered += 1
        worker = task.worker
        if worker is None:
            return
        hostname = worker.hostname
        if hostname is None:
            return
        unfinished = self._unfinished.get(hostname)
        if task.state in READY_STATES:
            if unfinished is not None:
                unfinished.pop(uuid, None)
        elif unfinished is None:
            self._unfinished[hostname] = {uuid: None}
        else:
            unfinished[uuid] = None

    def stream_gap(self, hostname: str, now: float | None = None) -> None:
        """Events from ``hostname`` were lost in transit (a sequence gap) at ``now``."""
        self._gaps[hostname] = time.time() if now is None else now

    def unfinished(self, hostname: str) -> int:
        """Unfinished tasks known on ``hostname``."""
        return len(self._unfinished.get(hostname, ()))

    def sweep(self, state: State, now: float | None = None) -> int:
        """Mark tasks possibly lost; returns how many were newly marked."""
        now = time.time() if now is None else now
        return state.freeze_while(self._sweep, state.tasks.data, state.workers.data, now)

    def _sweep(self, tasks: Mapping[str, Task], workers: Mapping[str, Worker], now: float) -> int:
        marked = 0
        for hostname, unfinished in list(self._unfinished.items()):
            for uuid in list(unfinished):
                task = tasks.get(uuid)
                if task is None or task.state in READY_STATES:
                    del unfinished[uuid]
            if not unfinished:
                del self._unfinished[hostname]
                self._gaps.pop(hostname, None)
                continue
            reason, since = self._silence(workers.get(hostname), hostname, now)
            if reason is None or now - since < self.policy.lost_after:
                continue
            for uuid in unfinished:
                if uuid in self.lost:
                    continue
                if reason == STREAM_GAP and _received_at(tasks[uuid]) > since:
                    continue
                self.lost[uuid] = reason
                self.marked[reason] = self.marked.get(reason, 0) + 1
                marked += 1
        for uuid in [uuid for uuid in self.lost if uuid not in tasks]:
            del self.lost[uuid]
        return marked

    def _silence(
        self, worker: Worker | None, hostname: str, now: float
    ) -> tuple[str | None, float]:
        """Why and since when the tasks of ``hostname`` may be lost (None: they are not)."""
        if worker is not None:
            alive = liveness(worker, self.policy, now)
            if alive.status == OFFLINE and alive.last_seen is not None:
                return SILENT_WORKER, alive.last_seen + alive.freq * self.policy.offline_after
        gap = self._gaps.get(hostname)
        if gap is not None:
            return STREAM_GAP, gap
        return None, now

    def forget_worker(self, hostname: str) -> None:
        """Stop tracking ``hostname`` (after it was purged)."""
        self._unfinished.pop(hostname, None)
        self._gaps.pop(hostname, None)


def _received_at(task: Task) -> float:
    received = task.local_received
    return float(received) if isinstance(received, int | float) else 0.0


def purge_offline(state: State, policy: LivenessPolicy, now: float | None = None) -> list[str]:
    """Remove workers offline for longer than ``policy.purge_after``; their hostnames."""
    if policy.purge_after is None:
        return []
    moment = time.time() if now is None else now
    limit = policy.purge_after

    def purge() -> list[str]:
        purged = []
        for hostname, worker in list(state.workers.data.items()):
            alive = liveness(worker, policy, moment)
            if alive.status != OFFLINE:
                continue
            if alive.seen_ago is None or alive.seen_ago > limit:
                del state.workers[hostname]
                purged.append(hostname)
        return purged

    return state.freeze_while(purge)
