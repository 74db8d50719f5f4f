"""The engine behind ``evcore serve``: an AsyncReceiver feeding a State, metrics and the
operator's additions (liveness, loss, retention, budget, persistence) on a schedule."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evcore.aio import DEFAULT_MAXSIZE, AsyncReceiver
from evcore.errors import ConnectionLost
from evcore.serve.metrics import DEFAULT_MAX_LABEL_SETS, EventMetrics, Family, SourceStats
from evcore.serve.rates import EventRates
from evcore.serve.recent import RecentIndex
from evcore.serve.reconcile import Reconciler, apply_document, open_results, parse_document
from evcore.serve.stream import EventStream
from evcore.state import State, Task
from evcore.state.liveness import LivenessPolicy, LossTracker, purge_offline
from evcore.state.retention import RetentionPolicy
from evcore.state.snapshot import SnapshotError
from evcore.transport import Transport

logger = logging.getLogger(__name__)

#: Events applied per turn of the event loop, so HTTP requests are served in between.
INGEST_BATCH = 500


@dataclass
class MonitorOptions:
    """Everything ``evcore serve`` can be told about its State and schedule."""

    max_tasks: int | None = 10_000
    max_workers: int | None = 5_000
    liveness: LivenessPolicy = field(default_factory=LivenessPolicy)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    max_label_sets: int = DEFAULT_MAX_LABEL_SETS
    queue_size: int = DEFAULT_MAXSIZE
    #: ``/readyz`` fails while the oldest unapplied event is older than this (seconds).
    ready_max_lag: float = 5.0
    #: How often liveness and loss are checked (seconds).
    sweep_interval: float = 1.0
    #: How often retention, the budget and the purge run (seconds).
    housekeeping_interval: float = 10.0
    state_file: Path | None = None
    save_interval: float = 60.0
    #: Receiver options (``routing_key``, ``queue_max_length``...).
    receiver_options: Mapping[str, Any] = field(default_factory=dict)
    #: Celery's result backend (``redis://...``), read to reconcile possibly lost tasks.
    result_backend: str | None = None


class Monitor:
    """A State fed from ``url`` through an :class:`~evcore.aio.AsyncReceiver`, with metrics.

    ``apply(events)`` feeds events directly (tests, or a source of one's own);
    :meth:`start` consumes from the broker until :meth:`stop`.
    """

    def __init__(
        self, url: Transport | str | None = None, options: MonitorOptions | None = None
    ) -> None:
        self.url = url
        self.options = options = options or MonitorOptions()
        self.state = self._initial_state()
        self.losses = LossTracker(options.liveness)
        #: Applied events, to server-sent-event clients (``/api/events/stream``).
        self.stream = EventStream()
        #: Events per second by type, for the dashboard's charts.
        self.rates = EventRates()
        #: Tasks newest first, for the API's default order.
        self.recent = RecentIndex()
        self.recent.rebuild(self.state.tasks.data)
        for task in self.state.tasks.data.values():  # restored tasks still unfinished
            self.losses.task_event(task)
        self.reconciler: Reconciler | None = None
        if options.result_backend is not None:
            self.reconciler = Reconciler(open_results(options.result_backend))
        self.purged = 0
        self.saves = 0
        self.save_errors = 0
        self.started = time.time()
        self.receiver: AsyncReceiver | None = None
        self.metrics = EventMetrics(
            self.state,
            options.liveness,
            max_label_sets=options.max_label_sets,
            source=self.source_stats,
            extra=self._extra_metrics,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _initial_state(self) -> State:
        options = self.options
        limits: dict[str, Any] = {
            "max_tasks_in_memory": options.max_tasks,
            "max_workers_in_memory": options.max_workers,
        }
        path = options.state_file
        if path is not None and path.exists():
            try:
                state = State.from_json(path.read_bytes(), **limits)
            except (OSError, SnapshotError, ValueError, KeyError, TypeError) as exc:
                logger.warning("could not restore the state from %s: %s", path, exc)
            else:
                logger.info("restored %d tasks from %s", len(state.tasks), path)
                return state
        return State(
            max_tasks_in_memory=options.max_tasks, max_workers_in_memory=options.max_workers
        )

    # -- events ---------------------------------------------------------------------------

    def apply(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Apply events to the State, the metrics and the loss tracker."""
        feed = self.state.event
        observe = self.metrics.observe
        track = self.losses.task_event
        recent = self.recent
        stream = self.stream
        count = self.rates.count
        now = time.time()
        for event in events:
            result = feed(event)
            if result is None:
                continue
            observe(event, result)
            count(event["type"], now)
            if stream.subscribers:
                stream.publish(event)
            subject = result[0]
            if subject.__class__ is tuple and subject and subject[0].__class__ is Task:
                track(subject[0])
                recent.add(subject[0])
        if recent.needs_compaction(len(self.state.tasks)):
            self.state.freeze_while(recent.rebuild, self.state.tasks.data)

    def _on_loss(self, hostname: str, count: int) -> None:
        """The Receiver found a gap in ``hostname``'s sequence (called in its thread)."""
        self.state.record_loss(hostname, count)
        self.losses.stream_gap(hostname)

    # -- running --------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe and start consuming and the housekeeping schedule."""
        if self.url is None:
            raise ValueError("this monitor has no URL to consume from")
        options = dict(self.options.receiver_options)
        options.setdefault("on_loss", self._on_loss)
        self.receiver = AsyncReceiver(self.url, maxsize=self.options.queue_size, **options)
        await self.receiver.start()
        self._tasks = [
            asyncio.create_task(self._ingest(self.receiver), name="evcore-serve-ingest"),
            asyncio.create_task(self._sweep(), name="evcore-serve-sweep"),
            asyncio.create_task(self._housekeeping(), name="evcore-serve-housekeeping"),
        ]

    async def stop(self) -> None:
        """Stop consuming, cancel the schedule and save the state (if a file is set)."""
        self.stream.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.receiver is not None:
            await self.receiver.aclose()
        if self.reconciler is not None:
            self.reconciler.source.close()
        if self.options.state_file is not None:
            await asyncio.to_thread(self.save)

    async def _ingest(self, receiver: AsyncReceiver) -> None:
        try:
            async for batch in receiver.batches(INGEST_BATCH):
                self.apply(batch)
                await asyncio.sleep(0)  # let requests in between two batches
        except Exception:
            # /readyz turns 503 (the receiver is no longer connected); say why once here.
            logger.exception("evcore serve stopped applying events")

    async def _sweep(self) -> None:
        interval = self.options.sweep_interval
        while True:
            await asyncio.sleep(interval)
            self.sweep()
            if self.reconciler is not None and self.losses.lost:
                await self.reconcile()

    async def reconcile(self) -> int:
        """Ask the result backend about possibly lost tasks (a batch, in a thread) and give
        those it knows their final state; returns how many were reconciled."""
        reconciler = self.reconciler
        if reconciler is None:
            return 0
        due = reconciler.due(self.losses.lost)
        if not due:
            return 0
        try:
            documents = await asyncio.to_thread(reconciler.source.fetch, due)
        except ConnectionLost as exc:
            reconciler.errors += 1
            logger.warning("%s", exc)
            return 0
        return self.apply_results(documents)

    def apply_results(self, documents: Mapping[str, bytes]) -> int:
        """Apply result documents (raw, by task id) to the possibly lost tasks."""
        reconciler = self.reconciler
        if reconciler is None:
            return 0
        return self.state.freeze_while(self._apply_results, reconciler, documents)

    def _apply_results(self, reconciler: Reconciler, documents: Mapping[str, bytes]) -> int:
        done = 0
        tasks = self.state.tasks.data
        for uuid, raw in documents.items():
            task = tasks.get(uuid)
            document = parse_document(raw)
            if task is None or document is None or uuid not in self.losses.lost:
                continue
            status = apply_document(task, document)
            if status is None:
                continue
            del self.losses.lost[uuid]
            self.losses.task_event(task)  # finished: no longer unfinished
            self.recent.add(task)
            reconciler.record(uuid, status)
            done += 1
        return done

    async def _housekeeping(self) -> None:
        options = self.options
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(options.housekeeping_interval)
            await asyncio.to_thread(self.housekeeping)
            if options.state_file is not None and (
                time.monotonic() - last_save >= options.save_interval
            ):
                last_save = time.monotonic()
                await asyncio.to_thread(self.save)

    def sweep(self, now: float | None = None) -> int:
        """Mark tasks possibly lost; returns how many were newly marked."""
        return self.losses.sweep(self.state, now)

    def housekeeping(self, now: float | None = None) -> None:
        """Purge long-offline workers, expire tasks by state, fit the memory budget."""
        for hostname in purge_offline(self.state, self.options.liveness, now):
            self.losses.forget_worker(hostname)
            self.purged += 1
        self.options.retention.apply(self.state, now, self.options.max_tasks)

    def save(self) -> None:
        """Write the State's JSON snapshot to the state file, atomically."""
        path = self.options.state_file
        if path is None:
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(self.state.to_json(), "utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            self.save_errors += 1
            logger.warning("could not save the state to %s: %s", path, exc)
            with contextlib.suppress(OSError):
                temporary.unlink()
        else:
            self.saves += 1

    # -- what it tells --------------------------------------------------------------------

    def reconciled(self) -> Mapping[str, str]:
        """Task ids reconciled from the result backend (the most recent ones), by state."""
        return {} if self.reconciler is None else self.reconciler.remembered

    @property
    def connected(self) -> bool:
        return self.receiver is not None and self.receiver.connected

    def lag(self) -> float:
        return 0.0 if self.receiver is None else self.receiver.lag()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the service is ready (receiver connected, lag under the bound), and why."""
        lag = self.lag()
        connected = self.connected
        ready = connected and lag <= self.options.ready_max_lag
        return ready, {
            "ready": ready,
            "connected": connected,
            "lag_seconds": round(lag, 3),
            "max_lag_seconds": self.options.ready_max_lag,
        }

    def source_stats(self) -> SourceStats:
        receiver = self.receiver
        if receiver is None:
            return SourceStats()
        stats = receiver.receiver_stats
        return SourceStats(
            connected=receiver.connected,
            lag=receiver.lag(),
            queued=receiver.qsize,
            rejected=dict(stats.rejected) if stats is not None else None,
            lost=dict(stats.lost_events) if stats is not None else None,
            reconnects=stats.reconnects if stats is not None else 0,
            full_waits=receiver.stats.full_waits,
        )

    def _extra_metrics(self) -> Iterator[Family]:
        losses = self.losses
        yield Family(
            "gauge",
            "evcore_tasks_possibly_lost",
            "Unfinished tasks marked possibly lost now.",
            value=len(losses.lost),
        )
        marked = Family(
            "counter",
            "evcore_tasks_marked_lost",
            "Tasks marked possibly lost, by reason.",
            ("reason",),
        )
        for reason, count in list(losses.marked.items()):
            marked.add((reason,), count)
        yield marked
        retention = self.options.retention
        expired = Family(
            "counter", "evcore_tasks_expired", "Tasks removed by retention, by state.", ("state",)
        )
        for state, count in list(retention.expired.items()):
            expired.add((state,), count)
        yield expired
        yield Family(
            "counter",
            "evcore_state_budget_evictions",
            "Tasks evicted to stay under the memory budget.",
            value=retention.budget_evictions,
        )
        yield Family(
            "gauge",
            "evcore_state_estimated_bytes",
            "Estimated bytes held by tasks (at the last housekeeping).",
            value=retention.estimated_bytes,
        )
        yield Family(
            "counter", "evcore_workers_purged", "Offline workers purged.", value=self.purged
        )
        yield Family(
            "gauge",
            "evcore_stream_clients",
            "Clients of /api/events/stream now.",
            value=len(self.stream.subscribers),
        )
        yield Family(
            "counter",
            "evcore_stream_dropped_events",
            "Events dropped for stream clients that did not read fast enough.",
            value=self.stream.dropped_total,
        )
        if self.reconciler is not None:
            reconciled = Family(
                "counter",
                "evcore_tasks_reconciled",
                "Possibly lost tasks given their final state from the result backend.",
                ("state",),
            )
            for status, count in list(self.reconciler.reconciled.items()):
                reconciled.add((status,), count)
            yield reconciled
            yield Family(
                "counter",
                "evcore_result_backend_errors",
                "Reads of the result backend that failed.",
                value=self.reconciler.errors,
            )

    def status(self) -> dict[str, Any]:
        """A summary for ``/api/evcore``."""
        _, ready = self.readiness()
        stats = self.source_stats()
        return {
            **ready,
            "uptime_seconds": round(time.time() - self.started, 3),
            "events": self.state.event_count,
            "tasks": len(self.state.tasks),
            "workers": len(self.state.workers),
            "rejected": {"state": dict(self.state.rejected), "receiver": stats.rejected or {}},
            "lost_events": dict(stats.lost or self.state.lost_events),
            "evictions": self.state.evictions,
            "possibly_lost": len(self.losses.lost),
            "saves": self.saves,
        }
