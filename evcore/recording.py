"""Record the events on a bus and assert on them: the engine of evcore's pytest plugin.

Works without pytest too (any test runner): an :class:`EventRecorder` subscribes to every
event on a transport when it is created, and its ``assert_*`` and :meth:`~EventRecorder.wait_for`
methods raise ``AssertionError`` with a compact listing of what was seen.

>>> from evcore import Dispatcher
>>> from evcore.recording import EventRecorder
>>> recorder = EventRecorder("memory://docs-recording")
>>> with Dispatcher("memory://docs-recording", hostname="w1@example") as dispatcher:
...     _ = dispatcher.send("task-received", uuid="t1", name="add")
...     _ = dispatcher.send("task-succeeded", uuid="t1", result="4")
>>> recorder.assert_task_events("t1", ["task-received", "task-succeeded"])
>>> recorder.assert_sent("task-succeeded", uuid="t1", result="4")["hostname"]
'w1@example'
>>> recorder.state.tasks["t1"].state
'SUCCESS'
>>> recorder.close()
"""

from __future__ import annotations

import reprlib
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from evcore.receiver import Receiver
from evcore.state import State
from evcore.transport import Transport

__all__ = ["EventRecorder", "LiveState", "describe_event", "matches"]

#: Events listed in a failure message; the rest are counted.
MAX_LISTED = 40
#: Characters of one listed event.
MAX_LINE = 160
#: Fields shown for each listed event besides the ones a helper was asked about.
SHOWN_FIELDS = ("uuid", "hostname", "name", "result", "exception")

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlist = 4
_short.maxdict = 4


def matches(event: Mapping[str, Any], type: str | None, fields: Mapping[str, Any]) -> bool:
    """Whether ``event`` has ``type`` (any when None) and every field equal to ``fields``'
    (a partial match: other fields are ignored; ``unittest.mock.ANY`` matches anything)."""
    if type is not None and event.get("type") != type:
        return False
    missing = object()
    return all(event.get(key, missing) == value for key, value in fields.items())


def describe_event(event: Mapping[str, Any], wanted: Iterable[str] = ()) -> str:
    """One short line for an event: its type, then the fields asked about and a few usual
    ones, each ``repr``-ed and shortened (so hostile text cannot format the output)."""
    keys = list(dict.fromkeys([*wanted, *SHOWN_FIELDS]))
    parts = [_name(event.get("type"))]
    parts += [f"{key}={_short.repr(event[key])}" for key in keys if key in event]
    line = " ".join(parts)
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def _name(value: Any) -> str:
    """An event type as is when it is short printable text, else its shortened repr."""
    if isinstance(value, str) and value.isprintable() and " " not in value and len(value) < 60:
        return value
    return str(_short.repr(value))


def _wanted(type: str | None, fields: Mapping[str, Any]) -> str:
    shown = [f"{key}={_short.repr(value)}" for key, value in fields.items()]
    return " ".join([_name(type) if type else "an event", *shown])


def _closest(events: list[dict[str, Any]], type: str, fields: Mapping[str, Any]) -> str:
    """For a failed match: the event of ``type`` matching most fields, and how it differs."""
    candidates = [
        (sum(event.get(key) == value for key, value in fields.items()), -index, index)
        for index, event in enumerate(events)
        if event.get("type") == type
    ]
    if not candidates or not fields:
        return ""
    _, _, index = max(candidates)
    event = events[index]
    differ = [
        f"{key}={_short.repr(event[key])} (expected {_short.repr(value)})"
        if key in event
        else f"no {key} (expected {_short.repr(value)})"
        for key, value in fields.items()
        if event.get(key) != value
    ]
    return f"closest: #{index + 1} has " + ", ".join(differ) + "\n"


class EventRecorder:
    """Every event published on a transport from now on, with assertions over them.

    ``transport_or_url`` is usually a test's own ``memory://NAME`` bus. Events are read
    when asked for (:attr:`events`, the assertions, :attr:`state`), so what a
    :class:`~evcore.Dispatcher` published before is always there; events sent from other
    threads are waited for with :meth:`wait_for`. Batched events appear when their
    dispatcher flushes.
    """

    def __init__(self, transport_or_url: Transport | str, exchange: str = "celeryev") -> None:
        self.url = transport_or_url if isinstance(transport_or_url, str) else None
        self._events: list[dict[str, Any]] = []
        self._state = State()
        self._lock = threading.RLock()
        self._receiver = Receiver(
            transport_or_url,
            handlers={"*": self._record},
            queue_ttl=None,
            queue_expires=None,
            exchange=exchange,
        )

    def _record(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        self._state.event(event)

    def drain(self, timeout: float = 0.0) -> int:
        """Take in what has arrived (waiting up to ``timeout`` for the first message);
        return how many events were added."""
        with self._lock:
            before = len(self._events)
            # The smallest wait that still hands over everything queued at once.
            self._receiver.capture(timeout=max(timeout, 0.001))
            return len(self._events) - before

    # -- what was seen --------------------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event recorded so far, in the order received (a copy)."""
        self.drain()
        return list(self._events)

    def of_type(self, type: str, **fields: Any) -> list[dict[str, Any]]:
        """The events of ``type`` whose fields match ``fields``."""
        return [event for event in self.events if matches(event, type, fields)]

    def task_events(self, uuid: str) -> list[dict[str, Any]]:
        """The events of one task, in order."""
        return [event for event in self.events if event.get("uuid") == uuid]

    def types(self, uuid: str | None = None) -> list[str]:
        """The event types seen (of one task when ``uuid`` is given), in order."""
        events = self.events if uuid is None else self.task_events(uuid)
        return [str(event.get("type")) for event in events]

    @property
    def state(self) -> State:
        """A :class:`~evcore.state.State` fed with every recorded event, up to date."""
        self.drain()
        return self._state

    def clear(self) -> None:
        """Forget what was recorded (the State too)."""
        with self._lock:
            self.drain()
            self._events.clear()
            self._state = State()

    def listing(
        self, events: list[dict[str, Any]] | None = None, wanted: Iterable[str] = ()
    ) -> str:
        """What was seen, one compact line per event (the tail of failure messages)."""
        events = self.events if events is None else events
        wanted = list(wanted)
        if not events:
            return "  (no events)"
        lines = [
            f"  {index:>3} {describe_event(event, wanted)}"
            for index, event in enumerate(events[:MAX_LISTED], 1)
        ]
        if len(events) > MAX_LISTED:
            lines.append(f"  ... and {len(events) - MAX_LISTED} more")
        return "\n".join(lines)

    # -- assertions -----------------------------------------------------------------------

    def _where(self) -> str:
        return f" on {self.url}" if self.url else ""

    def assert_sent(self, type: str, **fields: Any) -> dict[str, Any]:
        """Assert an event of ``type`` with (at least) ``fields`` was seen; return the first."""
        __tracebackhide__ = True
        events = self.events
        for event in events:
            if matches(event, type, fields):
                return event
        raise AssertionError(
            f"expected {_wanted(type, fields)}; saw {len(events)} event(s){self._where()}:\n"
            + _closest(events, type, fields)
            + self.listing(events, fields)
        )

    def assert_not_sent(self, type: str, **fields: Any) -> None:
        """Assert no event of ``type`` with (at least) ``fields`` was seen."""
        __tracebackhide__ = True
        events = self.events
        found = [event for event in events if matches(event, type, fields)]
        if found:
            raise AssertionError(
                f"expected no {_wanted(type, fields)}; saw {len(found)} such among "
                f"{len(events)} event(s){self._where()}:\n" + self.listing(events, fields)
            )

    def assert_task_events(self, uuid: str, types: list[str]) -> None:
        """Assert the events of task ``uuid`` have exactly these types, in this order."""
        __tracebackhide__ = True
        seen = self.types(uuid)
        if seen != list(types):
            events = self.events
            raise AssertionError(
                f"task {uuid!r}: expected events {list(types)}\n"
                f"{'':>{len('task ') + len(repr(uuid))}}  but saw {seen}\n"
                f"all {len(events)} event(s){self._where()}:\n" + self.listing(events)
            )

    def wait_for(self, type: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """Wait until an event of ``type`` with (at least) ``fields`` is seen; return it, or
        fail after ``timeout`` seconds listing what was seen."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            events = self.events
            for event in events[checked:]:
                if matches(event, type, fields):
                    return event
            checked = len(events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {_wanted(type, fields)}; "
                    f"saw {len(events)} event(s){self._where()}:\n"
                    + _closest(events, type, fields)
                    + self.listing(events, fields)
                )
            self.drain(timeout=min(left, 0.1))

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop recording (what was recorded stays readable)."""
        with self._lock:
            self._receiver.close()

    @property
    def closed(self) -> bool:
        return self._receiver.closed

    def __enter__(self) -> EventRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EventRecorder {self.url or self._receiver!r}: {len(self._events)} events>"


class LiveState:
    """A :class:`~evcore.state.State` view that takes in the recorder's new events on every
    attribute read, so ``live.tasks[uuid].state`` is always current."""

    def __init__(self, recorder: EventRecorder) -> None:
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recorder.state, name)

    def __repr__(self) -> str:
        return repr(self._recorder.state)
