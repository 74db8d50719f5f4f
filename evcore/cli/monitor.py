"""The live monitor behind ``evcore top`` and ``evcore demo``: a Receiver feeding a State
in a background thread, and snapshots of both for the view."""

from __future__ import annotations

import threading
import time
from collections import deque
from itertools import islice
from typing import Any

from evcore.cli.source import EventSource
from evcore.cli.view import Link as LinkView
from evcore.cli.view import Snapshot, TaskRow, WorkerRow
from evcore.state import State, Task, Worker
from evcore.transport import StreamOptions

#: The window the event rate is averaged over, in seconds.
RATE_WINDOW = 5.0

#: Workers shown at most, so the task list keeps some room.
MAX_WORKER_ROWS = 20


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def worker_row(worker: Worker, now: float) -> WorkerRow:
    """What the view shows of one worker."""
    heartbeats = getattr(worker, "heartbeats", None) or []
    last = _number(heartbeats[-1]) if heartbeats else None
    loadavg = getattr(worker, "loadavg", None)
    if not isinstance(loadavg, list | tuple) or not all(_number(v) is not None for v in loadavg):
        loadavg = None
    return WorkerRow(
        hostname=str(worker.hostname),
        online=bool(worker.alive),
        heartbeat_age=None if last is None else now - last,
        active=_count(getattr(worker, "active", None)),
        processed=_count(getattr(worker, "processed", None)),
        loadavg=loadavg,
    )


def task_row(task: Task, now: float) -> TaskRow:
    """What the view shows of one task."""
    worker = task.worker
    host = worker.hostname if worker is not None else task.client
    timestamp = _number(task.timestamp)
    name = task.name
    return TaskRow(
        uuid=str(task.uuid),
        name=None if name is None else str(name),
        state=str(task.state),
        host=None if host is None else str(host),
        runtime=_number(task.runtime),
        age=None if timestamp is None else now - timestamp,
    )


class RateMeter:
    """Events per second over the last :data:`RATE_WINDOW` seconds."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, total: int, now: float | None = None) -> float:
        """Record the running ``total`` and return the current rate."""
        now = time.monotonic() if now is None else now
        samples = self._samples
        samples.append((now, total))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()
        first_time, first_total = samples[0]
        elapsed = now - first_time
        return (total - first_total) / elapsed if elapsed > 0 else 0.0


class Monitor:
    """Keep a State up to date from the broker at ``url`` until closed.

    The Receiver runs in a daemon thread; :meth:`snapshot` may be called from any other
    thread. ``failure`` holds the error that stopped the Receiver, if one did.
    """

    def __init__(
        self,
        url: str,
        title: str,
        wait: bool = False,
        max_tasks: int = 10_000,
        max_workers: int = 5_000,
        stream: StreamOptions | None = None,
    ) -> None:
        self.title = title
        self.state = State(max_workers_in_memory=max_workers, max_tasks_in_memory=max_tasks)
        self.source = EventSource(
            url, handlers={"*": self.state.event}, wait=wait, stream=stream
        )
        self.rate = RateMeter()
        self.failure: BaseException | None = None
        self._ever_connected = self.source.link.connected
        self._thread = threading.Thread(target=self._consume, name="evcore-monitor", daemon=True)

    def start(self) -> Monitor:
        """Start receiving in the background."""
        self._thread.start()
        return self

    def _consume(self) -> None:
        try:
            self.source.receiver.capture()
        except BaseException as exc:
            self.failure = exc

    @property
    def running(self) -> bool:
        """Whether the Receiver thread is still receiving."""
        return self._thread.is_alive()

    def link_view(self) -> LinkView:
        link = self.source.link
        self._ever_connected = self._ever_connected or link.connected or link.losses > 0
        return LinkView(
            connected=link.connected,
            error=link.error,
            for_seconds=time.monotonic() - link.since,
            ever_connected=self._ever_connected,
            reconnects=self.source.receiver.stats.reconnects,
        )

    def snapshot(self, task_rows: int, notes: tuple[str, ...] = ()) -> Snapshot:
        """A frame's worth of data: every worker (up to a bound) and the newest tasks."""
        state = self.state

        def take() -> tuple[list[WorkerRow], list[TaskRow], int, int, int]:
            now = time.time()
            workers = sorted(state.workers.values(), key=lambda worker: str(worker.hostname))
            worker_rows = [worker_row(worker, now) for worker in workers[:MAX_WORKER_ROWS]]
            recent = islice(state.tasks_by_time(), task_rows)
            rows = [task_row(task, now) for _, task in recent]
            return worker_rows, rows, state.event_count, state.task_count, len(state.tasks)

        worker_rows, rows, events, seen, kept = state.freeze_while(take)
        return Snapshot(
            title=self.title,
            link=self.link_view(),
            events=events,
            rate=self.rate.update(events),
            tasks_seen=max(seen, kept),
            tasks_kept=kept,
            workers=worker_rows,
            tasks=rows,
            notes=notes,
        )

    def close(self) -> None:
        """Stop the Receiver and wait briefly for its thread."""
        self.source.close()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
