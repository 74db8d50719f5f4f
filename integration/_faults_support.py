"""Shared machinery of the fault tests: a receiver collecting event types, a numbered
stream, a monitor feeding a State, the reconciliation of both sides' counters, and a TCP
proxy that can cut or stall.

The reconciliation is the point of every fault test. Each event the dispatcher accepted
ends in exactly one place::

    accepted = received + buffered + dropped + lost_in_transit

``buffered`` and ``dropped`` come from the dispatcher's offline buffer. The receiver's gap
detection counts every sequence number it never saw, which covers both the events the
buffer dropped (they had their numbers) and those lost in transit (published while no
subscription listened, or dropped by the broker), so ``lost_in_transit`` is what the
receiver counted beyond the buffer's drops. Each test ends with a sentinel event, so that
no gap is left open at the tail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _net import TcpProxy, wait_for

from evcore import Dispatcher, Receiver, State


class Capture:
    """A Receiver consuming in a thread of its own, collecting event types."""

    def __init__(self, url: str, exchange: str) -> None:
        self.receiver = Receiver(url, exchange=exchange, reconnect_delay=(0.05, 0.5))
        self.types: list[str] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self.receiver.itercapture(timeout=60):
                self.types.append(event["type"])
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def saw(self, *types: str, timeout: float = 15.0) -> bool:
        return wait_for(lambda: all(t in self.types for t in types), timeout)

    def stop(self) -> None:
        self.receiver.close()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the receiver did not stop"


class Monitor:
    """A Receiver in a thread of its own feeding a State, recording the numbers it sees."""

    def __init__(
        self,
        url: str,
        exchange: str,
        slow: Callable[[], float] | None = None,
        **options: Any,
    ) -> None:
        self.state = State(max_tasks_in_memory=None)
        self.numbers: list[int] = []
        self.errors: list[BaseException] = []
        self._slow = slow
        options.setdefault("reconnect_delay", (0.05, 0.5))
        self.receiver = Receiver(
            url,
            exchange=exchange,
            handlers={"*": self._handle},
            on_loss=self.state.record_loss,
            **options,
        )
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def _handle(self, event: dict[str, Any]) -> None:
        self.state.event(event)
        if isinstance(event.get("n"), int):
            self.numbers.append(event["n"])
        if self._slow is not None:
            pause = self._slow()
            if pause:
                time.sleep(pause)

    def _run(self) -> None:
        try:
            self.receiver.capture(timeout=120)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def saw(self, n: int, timeout: float = 20.0) -> bool:
        return wait_for(lambda: n in self.numbers, timeout)

    def stop(self) -> None:
        self.receiver.close()
        self._thread.join(15)
        assert not self._thread.is_alive(), "the receiver did not stop"


class Stream:
    """A dispatcher sending ``task-received`` events numbered 0, 1, 2, ..."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.accepted: list[int] = []
        self.largest_buffer = 0

    def send(self, count: int = 1, pad: int = 0) -> None:
        for _ in range(count):
            n = len(self.accepted)
            extra = {"pad": "x" * pad} if pad else {}
            event = self.dispatcher.send("task-received", uuid=f"t{n}", n=n, **extra)
            assert event is not None
            self.accepted.append(n)
            buffered = len(self.dispatcher.offline_buffer)
            self.largest_buffer = max(self.largest_buffer, buffered)


@dataclass
class FaultRow:
    """One line of the fault table."""

    fault: str
    accepted: int
    published: int
    received: int
    buffered: int
    dropped: int
    lost: int
    duplicates: int

    @property
    def reconciled(self) -> bool:
        return self.accepted == self.received + self.buffered + self.dropped + self.lost

    def __str__(self) -> str:
        return (
            f"{self.fault:<44} {self.accepted:>8} {self.published:>9} {self.received:>8} "
            f"{self.buffered:>8} {self.dropped:>7} {self.lost:>5} {self.duplicates:>4} "
            f"{'yes' if self.reconciled else 'NO':>10}"
        )


HEADER = (
    f"{'fault':<44} {'accepted':>8} {'published':>9} {'received':>8} {'buffered':>8} "
    f"{'dropped':>7} {'lost':>5} {'dups':>4} {'reconciled':>10}"
)


def reconcile(fault: str, stream: Stream, monitor: Monitor) -> FaultRow:
    """Check that every accepted event is accounted for exactly once; return the row.

    Call it once the sentinel (the stream's last event) has been received.
    """
    dispatcher, stats = stream.dispatcher, monitor.receiver.stats
    hostname = dispatcher.hostname
    received = monitor.numbers
    assert received == sorted(received), "events arrived out of order"
    assert len(set(received)) == len(received), "an event was handled twice"
    assert received[-1] == stream.accepted[-1], "the sentinel was not received"

    buffered = dispatcher.pending_events
    dropped = dispatcher.offline_buffer.dropped_events
    gaps = stats.lost_events.get(hostname, 0)
    row = FaultRow(
        fault=fault,
        accepted=len(stream.accepted),
        published=dispatcher.stats.events_sent,
        received=len(received),
        buffered=buffered,
        dropped=dropped,
        lost=gaps - dropped,
        duplicates=stats.duplicates,
    )
    # The dispatcher's side: accepted = handed to the broker + still buffered + dropped.
    assert row.accepted == row.published + row.buffered + row.dropped
    # The receiver's side: every number it did not see is a gap it counted (the sentinel
    # closes the tail), and the buffer's drops are among those gaps.
    missing = set(stream.accepted) - set(received)
    assert len(missing) == gaps + row.buffered
    assert gaps == row.dropped + row.lost
    assert row.lost >= 0
    # Everything handed to the broker arrived or was lost in transit, nothing else.
    assert row.published == row.received + row.lost
    assert row.reconciled
    # The State was told the same: the monitor can say "N events from w1 were lost".
    assert monitor.state.lost_events.get(hostname, 0) == gaps
    assert len(monitor.state.tasks) == row.received
    print(f"\n{HEADER}\n{row}")  # the fault table, one row per test (pytest -s)
    return row


StallingProxy = TcpProxy
