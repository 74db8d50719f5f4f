"""A simulated Celery cluster: workers and a client publishing the events real ones would.

Everything runs on one thread from a timetable of due actions, so the dispatchers can share
one transport. Workers batch their task events (``task.multi``, ``buffer_group={'task'}``)
and flush them once per tick, as a worker's event loop does; the client publishes
``task-sent`` un-batched from a disabled dispatcher, as Celery's producer does. Tasks
succeed, fail, retry, get revoked and spawn children.

A tool for demos (``evcore demo`` runs it under the live monitor) and tests (a realistic
stream from known seeds); it needs no optional library, so tests and embedders use it without
the ``cli`` extra.
"""

from __future__ import annotations

import heapq
import itertools
import platform
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from evcore import __version__
from evcore._connect import resolve_transport
from evcore.clock import LamportClock
from evcore.dispatcher import Dispatcher
from evcore.nodename import anon_nodename
from evcore.transport import Transport

#: How often a simulated worker sends a heartbeat, in seconds (Celery's default).
HEARTBEAT_FREQ = 2.0

#: How often the workers flush their batched task events, like an event loop's tick.
FLUSH_INTERVAL = 0.1

#: Seconds a worker stays away when it restarts.
RESTART_DOWNTIME = 8.0


@dataclass(frozen=True)
class TaskKind:
    """A kind of simulated task: its name, how often it is sent, and how it behaves."""

    name: str
    weight: float
    runtime: tuple[float, float]
    fail_rate: float = 0.0
    retries: int = 0
    revoke_rate: float = 0.0
    children: tuple[int, int] = (0, 0)


KINDS = (
    TaskKind("demo.add", 40, (0.02, 0.3)),
    TaskKind("demo.resize_image", 20, (0.3, 1.5)),
    TaskKind("demo.fetch_url", 15, (0.1, 1.0), fail_rate=0.5),
    TaskKind("demo.flaky", 10, (0.1, 0.5), retries=2),
    TaskKind("demo.long_report", 5, (4.0, 9.0), revoke_rate=0.6),
    TaskKind("demo.process_batch", 10, (0.2, 0.8), children=(2, 4)),
)
CHILD_KIND = TaskKind("demo.process_item", 0, (0.05, 0.4), fail_rate=0.1)


@dataclass
class SimTask:
    """One simulated task as its worker knows it."""

    kind: TaskKind
    uuid: str
    args: str
    kwargs: str
    root_id: str
    parent_id: str | None
    retries: int = 0
    eta: str | None = None
    worker: SimWorker | None = None


@dataclass(eq=False)
class SimWorker:
    """One simulated worker and its own dispatcher."""

    hostname: str
    dispatcher: Dispatcher
    online: bool = False
    draining: bool = False
    active: set[str] = field(default_factory=set)
    processed: int = 0


@dataclass
class SimulatorStats:
    """What the simulator did so far."""

    tasks: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    revoked: int = 0


def _iso(seconds_from_now: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now)).isoformat()


class ClusterSimulator:
    """Publish the events of ``workers`` simulated workers running ``rate`` tasks a second,
    of the ``kinds`` given (by weight).

    >>> from evcore.simulator import ClusterSimulator
    >>> simulator = ClusterSimulator("memory://docs-simulator", workers=2, rate=5, seed=1)
    >>> simulator.run(duration=0.5)
    >>> simulator.stats.tasks > 0
    True
    """

    def __init__(
        self,
        transport_or_url: Transport | str = "memory://",
        workers: int = 3,
        rate: float = 3.0,
        seed: int | None = None,
        exchange: str = "celeryev",
        heartbeat_freq: float = HEARTBEAT_FREQ,
        restarts: bool = True,
        kinds: Sequence[TaskKind] = KINDS,
    ) -> None:
        if workers < 1:
            raise ValueError("a simulated cluster needs at least one worker")
        self.transport, self._owns_transport = resolve_transport(transport_or_url)
        self.rate = rate
        self.heartbeat_freq = heartbeat_freq
        self.restarts = restarts and workers > 1
        self.random = random.Random(seed)
        self.stats = SimulatorStats()
        self._stop = threading.Event()
        self._timetable: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        host = socket.gethostname()
        #: One clock for the whole cluster, as if gossip kept the workers' clocks in step.
        self.clock = LamportClock()
        self.client = Dispatcher(
            self.transport,
            hostname=anon_nodename(),
            enabled=False,
            exchange=exchange,
            clock=self.clock,
        )
        self.workers = [
            SimWorker(
                f"demo-worker{index}@{host}",
                Dispatcher(
                    self.transport,
                    hostname=f"demo-worker{index}@{host}",
                    buffer_group={"task"},
                    exchange=exchange,
                    clock=self.clock,
                ),
            )
            for index in range(1, workers + 1)
        ]
        self.kinds = tuple(kinds)
        self._weights = [kind.weight for kind in self.kinds]

    # -- the timetable ------------------------------------------------------------------

    def _at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(
            self._timetable, (time.monotonic() + delay, next(self._sequence), action)
        )

    def stop(self) -> None:
        """Ask ``run()`` to end (from any thread)."""
        self._stop.set()

    @property
    def events_sent(self) -> int:
        """Events handed to the transport so far, by every simulated sender."""
        senders = [self.client, *(worker.dispatcher for worker in self.workers)]
        return sum(sender.stats.events_sent for sender in senders)

    def run(self, duration: float | None = None) -> None:
        """Simulate until ``duration`` seconds pass or ``stop()`` is called, then shut the
        workers down; raise ConnectionLost if the broker cannot be reached at start."""
        deadline = None if duration is None else time.monotonic() + duration
        try:
            self._start()
            while not self._stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                while self._timetable and self._timetable[0][0] <= now:
                    _, _, action = heapq.heappop(self._timetable)
                    action()
                wake = self._timetable[0][0] if self._timetable else now + 0.5
                if deadline is not None:
                    wake = min(wake, deadline)
                self._stop.wait(max(0.0, wake - time.monotonic()))
            self._shutdown()
        finally:
            self.close()

    def close(self) -> None:
        """Close every dispatcher, and the transport if it was opened from a URL."""
        for sender in (self.client, *(worker.dispatcher for worker in self.workers)):
            sender.close()
        if self._owns_transport:
            self.transport.close()

    # -- workers ------------------------------------------------------------------------

    def _start(self) -> None:
        first = self.workers[0].dispatcher
        first.buffer_while_offline = False  # fail fast when the broker is away
        try:
            self._online(self.workers[0])
        finally:
            first.buffer_while_offline = True
        for worker in self.workers[1:]:
            self._online(worker)
        self._at(FLUSH_INTERVAL, self._tick)
        if self.rate > 0:
            self._at(self.random.expovariate(self.rate), self._arrival)
        if self.restarts:
            self._at(self.random.uniform(15.0, 30.0), self._restart_one)

    def _tick(self) -> None:
        for worker in self.workers:
            worker.dispatcher.flush()
        self._at(FLUSH_INTERVAL, self._tick)

    def _worker_fields(self, worker: SimWorker) -> dict[str, Any]:
        busy = len(worker.active)
        load = [round(busy * 0.4 + self.random.uniform(0.05, 0.6), 2) for _ in range(3)]
        return {
            "freq": self.heartbeat_freq,
            "active": busy,
            "processed": worker.processed,
            "loadavg": load,
            "sw_ident": "evcore-demo",
            "sw_ver": __version__,
            "sw_sys": platform.system(),
        }

    def _online(self, worker: SimWorker) -> None:
        worker.online, worker.draining = True, False
        worker.dispatcher.send("worker-online", **self._worker_fields(worker))
        self._at(self.heartbeat_freq, lambda: self._heartbeat(worker))

    def _heartbeat(self, worker: SimWorker) -> None:
        if not worker.online:
            return
        worker.dispatcher.send("worker-heartbeat", **self._worker_fields(worker))
        self._at(self.heartbeat_freq, lambda: self._heartbeat(worker))

    def _offline(self, worker: SimWorker) -> None:
        worker.dispatcher.flush()
        worker.dispatcher.send("worker-offline", **self._worker_fields(worker))
        worker.online = False

    def _restart_one(self) -> None:
        """Take one worker down for a while (warm shutdown, then back online)."""
        candidates = [w for w in self.workers if w.online and not w.draining]
        if len(candidates) > 1:
            worker = self.random.choice(candidates)
            worker.draining = True
            self._finish_draining(worker)
        self._at(self.random.uniform(25.0, 45.0), self._restart_one)

    def _finish_draining(self, worker: SimWorker) -> None:
        if worker.active:
            self._at(0.5, lambda: self._finish_draining(worker))
            return
        self._offline(worker)
        self._at(RESTART_DOWNTIME, lambda: self._online(worker))

    def _shutdown(self) -> None:
        for worker in self.workers:
            if worker.online:
                self._offline(worker)

    # -- tasks --------------------------------------------------------------------------

    def _arrival(self) -> None:
        kind = self.random.choices(self.kinds, self._weights)[0]
        self._send_task(kind, parent=None)
        self._at(self.random.expovariate(self.rate), self._arrival)

    def _arguments(self, kind: TaskKind) -> tuple[str, str]:
        number = self.random.randint(1, 999)
        if kind.name == "demo.add":
            return f"({number}, {self.random.randint(1, 99)})", "{}"
        if kind.name == "demo.fetch_url":
            return f"('https://example.com/page/{number}',)", "{'timeout': 5}"
        return f"({number},)", "{}"

    def _send_task(self, kind: TaskKind, parent: SimTask | None) -> None:
        task_id = str(uuid.uuid4())
        args, kwargs = self._arguments(kind)
        task = SimTask(
            kind,
            task_id,
            args,
            kwargs,
            root_id=parent.root_id if parent else task_id,
            parent_id=parent.uuid if parent else None,
        )
        self.stats.tasks += 1
        self._publish_sent(task)
        if kind.revoke_rate and self.random.random() < kind.revoke_rate / 4:
            self._at(0.01, lambda: self._revoke_early(task))
            return
        self._at(self.random.uniform(0.005, 0.05), lambda: self._receive(task))

    def _publish_sent(self, task: SimTask) -> None:
        self.client.publish(
            "task-sent",
            {
                "uuid": task.uuid,
                "root_id": task.root_id,
                "parent_id": task.parent_id,
                "name": task.kind.name,
                "args": task.args,
                "kwargs": task.kwargs,
                "retries": task.retries,
                "eta": task.eta,
                "expires": None,
                "queue": "celery",
                "exchange": "",
                "routing_key": "celery",
            },
        )

    def _pick_worker(self) -> SimWorker | None:
        ready = [w for w in self.workers if w.online and not w.draining]
        if not ready:
            return None
        return min(ready, key=lambda w: (len(w.active), self.random.random()))

    def _receive(self, task: SimTask) -> None:
        worker = self._pick_worker()
        if worker is None:
            self._at(0.5, lambda: self._receive(task))
            return
        task.worker = worker
        worker.active.add(task.uuid)
        worker.dispatcher.send(
            "task-received",
            uuid=task.uuid,
            name=task.kind.name,
            args=task.args,
            kwargs=task.kwargs,
            root_id=task.root_id,
            parent_id=task.parent_id,
            retries=task.retries,
            eta=task.eta,
            expires=None,
        )
        self._at(self.random.uniform(0.001, 0.02), lambda: self._start_task(task, worker))

    def _start_task(self, task: SimTask, worker: SimWorker) -> None:
        worker.dispatcher.send("task-started", uuid=task.uuid)
        runtime = self.random.uniform(*task.kind.runtime)
        if task.kind.revoke_rate and self.random.random() < task.kind.revoke_rate:
            after = runtime * self.random.uniform(0.2, 0.6)
            self._at(after, lambda: self._terminate(task, worker))
        else:
            self._at(runtime, lambda: self._finish(task, worker, runtime))

    def _done(self, task: SimTask, worker: SimWorker) -> None:
        worker.active.discard(task.uuid)
        worker.processed += 1

    def _finish(self, task: SimTask, worker: SimWorker, runtime: float) -> None:
        self._done(task, worker)
        kind = task.kind
        if task.retries < kind.retries and self.random.random() < 0.7:
            self._retry(task, worker)
        elif self.random.random() < kind.fail_rate:
            self.stats.failed += 1
            exception = "ConnectionError('remote end closed connection without response')"
            worker.dispatcher.send(
                "task-failed",
                uuid=task.uuid,
                exception=exception,
                traceback=(
                    "Traceback (most recent call last):\n"
                    f'  File "demo/tasks.py", line 42, in {kind.name.split(".")[-1]}\n'
                    f"{exception}\n"
                ),
            )
        else:
            self.stats.succeeded += 1
            worker.dispatcher.send(
                "task-succeeded", uuid=task.uuid, result=self._result(task), runtime=runtime
            )
            low, high = kind.children
            for _ in range(self.random.randint(low, high) if high else 0):
                self._send_task(CHILD_KIND, parent=task)

    def _result(self, task: SimTask) -> str:
        if task.kind.name == "demo.add":
            left, right = (int(part) for part in task.args.strip("()").split(","))
            return str(left + right)
        if task.kind.name == "demo.resize_image":
            return f"'thumb_{self.random.randint(1000, 9999)}.png'"
        return repr({"ok": True, "items": self.random.randint(1, 50)})

    def _retry(self, task: SimTask, worker: SimWorker) -> None:
        """What Task.retry() does: re-send the task with an ETA, then report the retry."""
        self.stats.retried += 1
        countdown = self.random.uniform(1.0, 3.0)
        task.retries += 1
        task.eta = _iso(countdown)
        exception = f"Retry('Retry in {round(countdown)}s: TimeoutError()')"
        resent = replace(task, parent_id=task.uuid)
        self._publish_sent(resent)
        worker.dispatcher.send(
            "task-retried",
            uuid=task.uuid,
            exception=exception,
            traceback=f"Traceback (most recent call last):\n{exception}\n",
        )
        self._at(countdown, lambda: self._receive(task))

    def _terminate(self, task: SimTask, worker: SimWorker) -> None:
        self._done(task, worker)
        self.stats.revoked += 1
        worker.dispatcher.send(
            "task-revoked", uuid=task.uuid, terminated=True, signum=15, expired=False
        )

    def _revoke_early(self, task: SimTask) -> None:
        """A task revoked before any worker received it."""
        worker = self._pick_worker()
        if worker is None:
            return
        self.stats.revoked += 1
        worker.dispatcher.send(
            "task-revoked", uuid=task.uuid, terminated=False, signum=None, expired=False
        )


__all__ = ["KINDS", "ClusterSimulator", "SimulatorStats", "TaskKind"]
