"""A resumable monitor: a State fed from a durable transport, checkpointed, restartable.

>>> from evcore import Dispatcher
>>> from evcore.streammonitor import StreamMonitor
>>> url = "memory+stream://docs-monitor?partitions=2"
>>> with Dispatcher(url, hostname="w1@example") as dispatcher:
...     _ = dispatcher.send("task-received", uuid="t1", name="add")
>>> monitor = StreamMonitor(url)  # no checkpoint file: starts from the earliest message
>>> monitor.run(duration=0.2)
>>> monitor.state.tasks["t1"].name
'add'
>>> monitor.close()

With a checkpoint path, the State, the stream positions it reflects and the senders'
sequence lanes are saved atomically every ``interval`` seconds and on :meth:`close`; a
monitor started again on the same path restores them and resumes just after those
positions, so that after a ``kill -9`` at any moment nothing is lost and nothing is applied
twice. In a consumer group each member holds the partitions it owns: a partition it is
given without a checkpoint of its own is rebuilt from the earliest retained message, and
the tasks of a partition it gives up are dropped from its State (after a checkpoint).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from evcore.checkpoint import Checkpoint, load_checkpoint, resume_from, save_checkpoint
from evcore.receiver import Receiver
from evcore.state import State
from evcore.state.snapshot import snapshot
from evcore.transport import EARLIEST, Start, StreamOptions, Transport, partition_for

__all__ = ["StreamMonitor"]

logger = logging.getLogger(__name__)

#: Longest one capture lasts, so that checkpoints and a stop are never far apart.
SLICE = 0.5

#: Relay event keys a checkpoint keeps (the most recent): a second relay's copy of an event
#: the checkpoint holds is still dropped after a restart if it comes within this many events.
CHECKPOINT_IDS = 20_000


class StreamMonitor:
    """A State kept from a durable stream (see the module documentation)."""

    def __init__(
        self,
        transport_or_url: Transport | str,
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        group: str | None = None,
        member: str | None = None,
        start: Start | Mapping[int, str] = EARLIEST,
        lease: float = 10.0,
        interval: float = 5.0,
        state_options: Mapping[str, Any] | None = None,
        exchange: str = "celeryev",
    ) -> None:
        self.checkpoint_path = checkpoint
        self.interval = interval
        self._state_options = dict(state_options or {})
        saved = load_checkpoint(checkpoint) if checkpoint is not None else None
        if saved is not None:
            self.state = State.from_json(saved.state, **self._state_options)
            self._positions = dict(saved.positions)
        else:
            self.state = State(**self._state_options)
            self._positions = {}
        self._start = start
        #: Checkpoints written, and when the last one was.
        self.checkpoints = 0
        self.last_checkpoint = 0.0
        self._stopped = False
        self._closing = False
        self._held_at_stop: frozenset[int] | None = None
        self.receiver = Receiver(
            transport_or_url,
            handlers={"*": self._apply},
            on_loss=self._record_loss,
            exchange=exchange,
            stream=StreamOptions(
                group=group,
                member=member,
                start=EARLIEST,
                lease=lease,
                on_assigned=self._assigned,
                on_revoked=self._revoked,
            ),
            sequences=saved.sequences if saved is not None else None,
            seen_ids=saved.seen_ids if saved is not None else None,
        )
        self.partitions = self.receiver.transport.capabilities.partitions

    # -- feeding the State ----------------------------------------------------------------

    def _apply(self, event: dict[str, Any]) -> None:
        self.state.event(event)

    def _record_loss(self, hostname: str, count: int) -> None:
        self.state.record_loss(hostname, count)

    def _assigned(self, partitions: frozenset[int]) -> dict[int, str]:
        """Resume partitions the checkpoint holds; rebuild the others from ``start``."""
        return resume_from(partitions, self._positions, self._start)

    def _revoked(self, partitions: frozenset[int]) -> None:
        """Checkpoint, then drop what belongs to partitions given up."""
        if self._closing:
            return
        if self.checkpoint_path is not None:
            self.save()
        self._drop(partitions)

    def _drop(self, partitions: frozenset[int]) -> None:
        for partition in partitions:
            self._positions.pop(partition, None)
        data = snapshot(self.state)
        count = self.partitions
        kept = [t for t in data["tasks"] if partition_for(t["uuid"], count) not in partitions]
        if len(kept) == len(data["tasks"]):
            return
        gone = {t["uuid"] for t in data["tasks"]}.difference(t["uuid"] for t in kept)
        waiting = data["pending_children"]
        for task in kept:
            # A child whose parent leaves waits for it again, as if never linked.
            if task.get("parent_id") in gone:
                waiting.setdefault(task["parent_id"], []).append(task["uuid"])
        data["tasks"] = kept
        self.state = State.from_json(data, **self._state_options)

    # -- running --------------------------------------------------------------------------

    def run(self, duration: float | None = None, idle_exit: float | None = None) -> None:
        """Apply events until :meth:`stop`, ``duration`` seconds, or ``idle_exit`` seconds
        without an event; checkpoint every ``interval`` seconds meanwhile."""
        end = None if duration is None else time.monotonic() + duration
        idle_since = time.monotonic()
        next_save = time.monotonic() + self.interval
        receiver = self.receiver
        while not self._stopped:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            wait = SLICE if end is None else min(SLICE, end - now)
            # capture() returns on its timeout only with every read event applied, so the
            # positions saved below match the State exactly.
            if receiver.capture(timeout=wait):
                idle_since = time.monotonic()
            elif idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                break
            if self.checkpoint_path is not None and time.monotonic() >= next_save:
                self.save()
                next_save = time.monotonic() + self.interval

    def stop(self) -> None:
        """End :meth:`run` soon (from a signal handler or another thread)."""
        self._held_at_stop = self.receiver.assignment()
        self._stopped = True

    def save(self) -> None:
        """Write the checkpoint now (no-op without a checkpoint path)."""
        if self.checkpoint_path is None:
            return
        if self.receiver.pending_events:
            # Interrupted in the middle of a message: its events are partly applied, so no
            # position matches the State. The previous checkpoint stands.
            logger.warning("not checkpointing in the middle of a message")
            return
        positions = {**self._positions, **self.receiver.positions()}
        self._positions = positions
        save_checkpoint(
            self.checkpoint_path,
            Checkpoint(
                snapshot(self.state),
                positions,
                self.receiver.sequences(),
                time.time(),
                self.receiver.seen_ids(CHECKPOINT_IDS),
            ),
        )
        self.checkpoints += 1
        self.last_checkpoint = time.time()

    def stats(self) -> dict[str, Any]:
        """What this monitor holds and did, for logs and tools."""
        receiver = self.receiver.stats
        held = self._held_at_stop
        return {
            # What it owned when told to stop, before the others began leaving the group.
            "partitions": sorted(self.receiver.assignment() if held is None else held),
            "events": self.state.event_count,
            "tasks": len(self.state.tasks),
            "workers": len(self.state.workers),
            "duplicates": receiver.duplicates,
            "lost": sum(receiver.lost_events.values()),
            "trimmed": receiver.trimmed,
            "checkpoints": self.checkpoints,
        }

    def close(self) -> None:
        """Checkpoint (if a path was given) and release the stream."""
        if self._closing:
            return
        if self.checkpoint_path is not None:
            self.save()
        self._closing = self._stopped = True
        self.receiver.close()
