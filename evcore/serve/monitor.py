"""The engine behind ``evcore serve``: an AsyncReceiver feeding a State, metrics and the
operator's additions (liveness, loss, retention, budget, persistence) on a schedule.

The state file is a checkpoint (:mod:`evcore.checkpoint`). On a durable stream it also
holds the stream positions, sender lanes and relay keys of exactly the events the saved
State reflects: ingestion pauses at a stream mark while the file is written, and a
restarted service resumes just after those positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evcore._connect import resolve_transport
from evcore.aio import DEFAULT_MAXSIZE, AsyncReceiver, StreamMark
from evcore.checkpoint import (
    Checkpoint,
    is_checkpoint,
    parse_checkpoint,
    resume_from,
    save_checkpoint,
)
from evcore.codec import loads
from evcore.errors import ConnectionLost
from evcore.serve.metrics import DEFAULT_MAX_LABEL_SETS, EventMetrics, Family, SourceStats
from evcore.serve.rates import EventRates
from evcore.serve.recent import RecentIndex
from evcore.serve.reconcile import Reconciler, apply_document, open_results, parse_document
from evcore.serve.stream import EventStream
from evcore.state import State, Task
from evcore.state.liveness import LivenessPolicy, LossTracker, purge_offline
from evcore.state.retention import RetentionPolicy
from evcore.state.snapshot import SnapshotError, snapshot
from evcore.transport import EARLIEST, Start, StreamOptions, Transport

logger = logging.getLogger(__name__)

#: Events applied per turn of the event loop, so HTTP requests are served in between.
INGEST_BATCH = 500
#: Seconds given at shutdown to apply the events already taken from the broker.
DRAIN_TIMEOUT = 10.0


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
    #: Durable URLs: where to read a partition the state file holds no position for.
    stream_start: Start | Mapping[int, str] = EARLIEST


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
        #: Stream positions, sender lanes and relay keys the State reflects (durable URLs).
        self.positions: dict[int, str] = {}
        self._sequences: dict[str, Any] = {}
        self._seen_ids: list[tuple[str, int | None]] = []
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
        #: Whether the source is a durable stream (known once started).
        self.durable = False
        self._owned_transport: Transport | None = None
        # Held while events are applied and while the state file is written, so a save
        # sees the State between two batches (and, on a stream, at a mark).
        self._applying = asyncio.Lock()
        self._save_due = False
        self._write_lock = threading.Lock()
        self._written_at = 0.0
        self._pending_losses: list[tuple[str, int]] = []
        #: The stream mark the State stands at exactly, if it does (durable streams).
        self._mark: StreamMark | None = None
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
                state = self._restore(path, limits)
            except (OSError, SnapshotError, ValueError, KeyError, TypeError) as exc:
                logger.warning("could not restore the state from %s: %s", path, exc)
                self.positions, self._sequences, self._seen_ids = {}, {}, []
            else:
                logger.info("restored %d tasks from %s", len(state.tasks), path)
                return state
        return State(
            max_tasks_in_memory=options.max_tasks, max_workers_in_memory=options.max_workers
        )

    def _restore(self, path: Path, limits: Mapping[str, Any]) -> State:
        """The State of a checkpoint (with its positions), or of a bare State snapshot."""
        data = loads(path.read_bytes())
        if not is_checkpoint(data):
            return State.from_json(data, **limits)
        saved = parse_checkpoint(data, str(path))
        state = State.from_json(saved.state, **limits)
        self.positions = dict(saved.positions)
        self._sequences = dict(saved.sequences)
        self._seen_ids = list(saved.seen_ids)
        return state

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
        self._mark = None
        if self._pending_losses:
            self._apply_losses()
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
        """The Receiver found a gap in ``hostname``'s sequence (called on the event loop,
        before the events after the gap): applied with them, so a save never holds it alone.
        """
        self._pending_losses.append((hostname, count))

    def _apply_losses(self) -> None:
        self._mark = None
        losses, self._pending_losses = self._pending_losses, []
        for hostname, count in losses:
            self.state.record_loss(hostname, count)
            self.losses.stream_gap(hostname)

    def _assigned(self, partitions: frozenset[int]) -> dict[int, str]:
        """Where to read newly owned partitions: after the state file's positions, else
        from ``stream_start`` (called in the receiving thread)."""
        return resume_from(partitions, self.positions, self.options.stream_start)

    # -- running --------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe and start consuming and the housekeeping schedule."""
        if self.url is None:
            raise ValueError("this monitor has no URL to consume from")
        options = dict(self.options.receiver_options)
        options.setdefault("on_loss", self._on_loss)
        transport, owned = await asyncio.to_thread(resolve_transport, self.url)
        self._owned_transport = transport if owned else None
        self.durable = transport.capabilities.durable
        if self.durable:
            options["stream"] = StreamOptions(start=EARLIEST, on_assigned=self._assigned)
            options["sequences"] = self._sequences
            options["seen_ids"] = self._seen_ids
        self.receiver = AsyncReceiver(transport, maxsize=self.options.queue_size, **options)
        try:
            await self.receiver.start()
        except BaseException:
            await self._release_transport()
            raise
        self._tasks = [
            asyncio.create_task(self._ingest(self.receiver), name="evcore-serve-ingest"),
            asyncio.create_task(self._sweep(), name="evcore-serve-sweep"),
            asyncio.create_task(self._housekeeping(), name="evcore-serve-housekeeping"),
        ]
        if self.options.state_file is not None:
            self._tasks.append(asyncio.create_task(self._persist(), name="evcore-serve-save"))

    async def stop(self) -> None:
        """Stop consuming, apply what was already taken from the broker (for up to
        ``DRAIN_TIMEOUT`` seconds), cancel the schedule and save the state file."""
        self.stream.close()
        receiver = self.receiver
        if receiver is not None and self._tasks:
            receiver.finish()
            ingest = self._tasks[0]
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(ingest), DRAIN_TIMEOUT)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if receiver is not None:
            await receiver.aclose()
        await self._release_transport()
        if self.reconciler is not None:
            self.reconciler.source.close()
        if self.options.state_file is not None:
            if self._pending_losses:
                self._apply_losses()
            if not await self.save_now() and self.durable:
                logger.warning(
                    "not saving %s: events past the last stream mark were applied; the "
                    "previous file stands",
                    self.options.state_file,
                )

    async def _release_transport(self) -> None:
        transport, self._owned_transport = self._owned_transport, None
        if transport is not None:
            await asyncio.to_thread(transport.close)

    async def _ingest(self, receiver: AsyncReceiver) -> None:
        try:
            async for batch, mark in receiver.marked_batches(INGEST_BATCH):
                if batch or self._pending_losses:
                    async with self._applying:
                        self.apply(batch)
                if mark is not None:
                    self._mark = mark
                    if self._save_due:
                        await self.save_now()
                await asyncio.sleep(0)  # let requests in between two batches
        except Exception:
            # /readyz turns 503 (the receiver is no longer connected); say why once here.
            logger.exception("evcore serve stopped applying events")

    async def _sweep(self) -> None:
        interval = self.options.sweep_interval
        while True:
            await asyncio.sleep(interval)
            if self._pending_losses:  # a gap with no event after it yet
                async with self._applying:
                    self._apply_losses()
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
        while True:
            await asyncio.sleep(self.options.housekeeping_interval)
            await asyncio.to_thread(self.housekeeping)

    async def _persist(self) -> None:
        while True:
            await asyncio.sleep(self.options.save_interval)
            await self.save_now()

    def sweep(self, now: float | None = None) -> int:
        """Mark tasks possibly lost; returns how many were newly marked."""
        return self.losses.sweep(self.state, now)

    def housekeeping(self, now: float | None = None) -> None:
        """Purge long-offline workers, expire tasks by state, fit the memory budget."""
        for hostname in purge_offline(self.state, self.options.liveness, now):
            self.losses.forget_worker(hostname)
            self.purged += 1
        self.options.retention.apply(self.state, now, self.options.max_tasks)

    async def save_now(self) -> bool:
        """Write the state file from a running service: False when none is set or, on a
        stream, when the State is not at a mark (the save then happens at the next one).

        On a stream, applying events pauses while the State is copied (about 10 µs a task),
        so that the positions saved are exactly those of the copy; the broker keeps what
        arrives meanwhile. On pub/sub nothing is paused.
        """
        if self.options.state_file is None:
            return False
        if not self.durable:
            await asyncio.to_thread(self.save)  # copied and written in the thread
            return True
        async with self._applying:
            mark = self._mark
            if mark is None:
                self._save_due = True
                return False
            self._save_due = False
            checkpoint = await asyncio.to_thread(self._checkpoint, mark)
        await asyncio.to_thread(self._write, checkpoint)
        return True

    def save(self, mark: StreamMark | None = None) -> None:
        """Write the state file atomically: the State's snapshot with the stream positions
        it reflects (``mark``'s over those last saved or restored). Called directly, the
        State must not be changing (the service saves through :meth:`save_now`)."""
        if self.options.state_file is not None:
            self._write(self._checkpoint(mark))

    def _checkpoint(self, mark: StreamMark | None) -> Checkpoint:
        if mark is not None:
            self.positions = {**self.positions, **mark.positions}
            self._sequences = dict(mark.sequences)
            self._seen_ids = list(mark.seen_ids)
        return Checkpoint(
            snapshot(self.state), self.positions, self._sequences, time.time(), self._seen_ids
        )

    def _write(self, checkpoint: Checkpoint) -> None:
        path = self.options.state_file
        if path is None:
            return
        # A periodic save cancelled at shutdown may still be writing in its thread: one
        # write at a time, and never an older checkpoint over a newer one.
        with self._write_lock:
            if checkpoint.saved_at < self._written_at:
                return
            try:
                save_checkpoint(path, checkpoint)
            except OSError as exc:
                self.save_errors += 1
                logger.warning("could not save the state to %s: %s", path, exc)
            else:
                self.saves += 1
                self._written_at = checkpoint.saved_at

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
            "durable": self.durable,
            "saved_positions": {str(p): position for p, position in sorted(self.positions.items())},
        }
