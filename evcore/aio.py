"""Consume events from asyncio: a Receiver in a worker thread behind a bounded queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from evcore.errors import ConfigurationError
from evcore.receiver import Handler, LossHandler, Receiver, ReceiverStats
from evcore.transport import Transport

logger = logging.getLogger(__name__)

#: Events queued between the consuming thread and the event loop by default.
DEFAULT_MAXSIZE = 10_000
#: Events handed over by one step of :meth:`AsyncReceiver.batches` at most, by default.
DEFAULT_BATCH = 500
#: How long the consuming thread waits for room before looking at ``closed`` again.
_WAIT_SLICE = 0.2
#: How long one capture of the consuming thread lasts: on a durable stream, how far apart
#: stream marks are at most, and how long :meth:`AsyncReceiver.finish` may take to stop it.
_CAPTURE_SLICE = 0.5
#: Relay event keys a stream mark carries (the most recent), as a checkpoint keeps them.
MARK_IDS = 20_000


@dataclass(frozen=True)
class StreamMark:
    """Where a durable stream stands once the events delivered before it are applied.

    Saved with a State fed exactly those events, it lets a restarted receiver resume after
    them (``positions`` through ``on_assigned``, ``sequences=`` and ``seen_ids=`` for the
    Receiver), applying nothing twice and counting nothing lost twice.
    """

    #: Per partition, the position of the last message whose events all came before.
    positions: Mapping[int, str]
    #: The sender lanes (``Receiver.sequences()``) at that point.
    sequences: Mapping[str, Any]
    #: The most recent relay event keys with their partitions (``Receiver.seen_ids()``).
    seen_ids: tuple[tuple[str, int | None], ...]
    #: Events queued before it, since the AsyncReceiver started.
    events: int


#: What the consuming thread puts beside the events: a stream mark, or a loss report
#: ``(hostname, count)``; each with the number of events queued before it.
_Control = tuple[int, StreamMark | tuple[str, int]]


@dataclass
class AsyncReceiverStats:
    """What crossed the queue between the consuming thread and the event loop."""

    #: Events put on the queue by the consuming thread.
    queued: int = 0
    #: Events taken off the queue by the event loop.
    delivered: int = 0
    #: Times the consuming thread found the queue full and waited (back-pressure).
    full_waits: int = 0
    #: Seconds the consuming thread spent waiting for room, in all.
    full_seconds: float = 0.0
    #: Events still queued when the receiver was closed (never delivered).
    dropped_on_close: int = 0
    #: Stream marks put beside the events (durable streams only).
    marks: int = 0


class AsyncReceiver:
    """Receive events in asyncio without blocking the event loop.

    A :class:`~evcore.Receiver` consumes in a worker thread and puts each event on a
    bounded queue; the event loop takes them with ``async for`` (one event at a time) or
    :meth:`batches` (lists, cheaper at high rates). When the queue is full the worker
    thread waits, so the broker's own buffering and limits apply instead of this process
    growing without bound. ``handlers`` run in the worker thread, before the event is
    queued (a thread-safe :class:`~evcore.state.State` may be fed there). ``on_loss`` is
    called on the event loop, in order with the events: just before the first event
    delivered after the gap. The other keyword arguments are the Receiver's.

    On a durable stream the worker thread also puts a :class:`StreamMark` between the
    events about twice a second: :meth:`marked_batches` hands each over after the events
    it follows, and a State fed exactly those events is saved with it as a checkpoint.

    >>> import asyncio
    >>> from evcore import Dispatcher
    >>> from evcore.aio import AsyncReceiver
    >>> async def main():
    ...     async with AsyncReceiver("memory://docs-aio") as receiver:
    ...         dispatcher = Dispatcher("memory://docs-aio", hostname="w1@example")
    ...         dispatcher.send("worker-online", freq=2.0)
    ...         async for event in receiver:
    ...             dispatcher.close()
    ...             return event["type"], event["hostname"]
    >>> asyncio.run(main())
    ('worker-online', 'w1@example')
    """

    def __init__(
        self,
        transport_or_url: Transport | str = "memory://",
        *,
        maxsize: int = DEFAULT_MAXSIZE,
        handlers: Mapping[str, Handler] | None = None,
        **receiver_options: Any,
    ) -> None:
        if maxsize < 1:
            raise ConfigurationError("maxsize must be at least 1")
        if "handlers" in receiver_options:
            raise ConfigurationError("pass handlers as the handlers argument")
        self._on_loss: LossHandler | None = receiver_options.pop("on_loss", None)
        if self._on_loss is not None:
            receiver_options["on_loss"] = self._queue_loss
        self.maxsize = maxsize
        self.stats = AsyncReceiverStats()
        self._target = transport_or_url
        self._options = receiver_options
        self._handlers = dict(handlers or {})
        self._queue: deque[dict[str, Any]] = deque()
        #: Marks and loss reports, in order, each after the events queued before it.
        self._controls: deque[_Control] = deque()
        self._last_marked: tuple[int, dict[int, str]] | None = None
        self._finishing = False
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._receiver: Receiver | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._finished = False
        self._closed = False

    # -- lifetime -------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe (in a thread, so a slow broker does not block the loop) and start
        consuming. Errors of the URL or of a missing client library are raised here."""
        if self._receiver is not None:
            return
        if self._closed:
            raise ConfigurationError("this AsyncReceiver was closed")
        self._loop = asyncio.get_running_loop()
        receiver = await asyncio.to_thread(
            Receiver, self._target, handlers={"*": self._handle}, **self._options
        )
        self._receiver = receiver
        self._thread = threading.Thread(
            target=self._consume, args=(receiver,), name="evcore-aio-receiver", daemon=True
        )
        self._thread.start()

    def finish(self) -> None:
        """Stop taking messages from the broker, and end iteration once the events already
        taken are delivered (within a capture slice, half a second). On a durable stream
        the last of them is followed by a final :class:`StreamMark`. :meth:`aclose` is
        still needed to release the subscription."""
        self._finishing = True

    async def aclose(self) -> None:
        """Stop consuming, wait for the worker thread and release the queue. Events still
        queued are dropped (counted in ``stats.dropped_on_close``)."""
        if self._closed:
            return
        self._closed = True
        receiver = self._receiver
        with self._room:
            self._room.notify_all()
        if receiver is not None:
            # Closing from here also ends a wait on the broker in the worker thread.
            await asyncio.to_thread(receiver.close)
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)
        with self._lock:
            self.stats.dropped_on_close += len(self._queue)
            self._queue.clear()
        self._wake()

    async def __aenter__(self) -> AsyncReceiver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the worker thread ----------------------------------------------------------------

    def _consume(self, receiver: Receiver) -> None:
        durable = receiver.stream is not None
        try:
            while not self._closed:
                receiver.capture(timeout=_CAPTURE_SLICE)
                if durable:
                    self._queue_mark(receiver)
                if self._finishing:  # after a whole capture, so nothing read is left behind
                    break
        except BaseException as exc:
            self._failure = exc
        finally:
            self._finished = True
            self._wake()

    def _handle(self, event: dict[str, Any]) -> None:
        """The Receiver's handler: run the user's handlers, then queue (waiting for room)."""
        handler = self._handlers.get(event["type"]) or self._handlers.get("*")
        if handler is not None:
            handler(event)
        queue = self._queue
        with self._room:
            if len(queue) >= self.maxsize:
                started = time.monotonic()
                self.stats.full_waits += 1
                while len(queue) >= self.maxsize and not self._closed:
                    self._room.wait(_WAIT_SLICE)
                self.stats.full_seconds += time.monotonic() - started
                if self._closed:
                    self.stats.dropped_on_close += 1
                    return
            queue.append(event)
            self.stats.queued += 1
            waiting = self._waiter is not None
        if waiting:
            self._wake()

    def _queue_mark(self, receiver: Receiver) -> None:
        """Put a stream mark after the events queued so far (consuming thread; only when
        every event read is handled, and only when something moved)."""
        if receiver.pending_events or self._closed:
            return
        positions = receiver.positions()
        events = self.stats.queued
        if self._last_marked == (events, positions):
            return
        self._last_marked = (events, positions)
        mark = StreamMark(
            positions, receiver.sequences(), tuple(receiver.seen_ids(MARK_IDS)), events
        )
        with self._room:
            self._controls.append((events, mark))
            self.stats.marks += 1
            waiting = self._waiter is not None
        if waiting:
            self._wake()

    def _queue_loss(self, hostname: str, count: int) -> None:
        """The Receiver's ``on_loss``: queue the report in order with the events."""
        receiver = self._receiver
        # Found while decoding a message: the events decoded before it are not queued yet.
        before = receiver.pending_events if receiver is not None else 0
        with self._room:
            self._controls.append((self.stats.queued + before, (hostname, count)))
            waiting = self._waiter is not None
        if waiting:
            self._wake()

    def _wake(self) -> None:
        """Resolve the event loop's waiter, from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(self._resolve_waiter)

    def _resolve_waiter(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the event loop side --------------------------------------------------------------

    async def get_batch(self, limit: int = DEFAULT_BATCH) -> list[dict[str, Any]]:
        """Wait for at least one event and return up to ``limit`` of them, oldest first.

        Raises :class:`StopAsyncIteration` once closed (or when the worker thread ended),
        and re-raises what ended the worker thread if it failed.
        """
        while True:
            batch, _ = await self.get_marked_batch(limit)
            if batch:
                return batch

    async def get_marked_batch(
        self, limit: int = DEFAULT_BATCH
    ) -> tuple[list[dict[str, Any]], StreamMark | None]:
        """Like :meth:`get_batch`, with the :class:`StreamMark` that follows the events, if
        one does: once they are applied, the State stands exactly at that mark. Every mark
        is handed over once, after its events; one reached with no new event comes with an
        empty list. On pub/sub the mark is always None.
        """
        if self._receiver is None and not self._closed:
            await self.start()
        limit = max(1, limit)
        queue = self._queue
        controls = self._controls
        stats = self.stats
        while True:
            losses: list[tuple[str, int]] = []
            batch: list[dict[str, Any]] = []
            mark: StreamMark | None = None
            with self._room:
                # What is due before the next event: loss reports, then at most one mark.
                while controls and controls[0][0] <= stats.delivered and mark is None:
                    item = controls.popleft()[1]
                    if isinstance(item, StreamMark):
                        mark = item
                    else:
                        losses.append(item)
                if mark is None and queue:
                    count = min(limit, len(queue))
                    if controls:  # a batch ends where the next mark or loss report sits
                        count = min(count, controls[0][0] - stats.delivered)
                    batch = [queue.popleft() for _ in range(count)]
                    stats.delivered += count
                    self._room.notify()
                    following = controls[0][1] if controls else None
                    if isinstance(following, StreamMark) and controls[0][0] == stats.delivered:
                        mark = following
                        controls.popleft()
                elif mark is None and not losses:
                    if self._closed or self._finished:
                        break
                    loop = asyncio.get_running_loop()
                    waiter = self._waiter = loop.create_future()
            if losses:
                self._report(losses)
            if batch or mark is not None:
                return batch, mark
            if losses:
                continue
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        if self._failure is not None and not self._closed:
            raise self._failure
        raise StopAsyncIteration

    def _report(self, losses: list[tuple[str, int]]) -> None:
        on_loss = self._on_loss
        if on_loss is None:
            return
        for hostname, count in losses:
            try:
                on_loss(hostname, count)
            except Exception:
                logger.exception("on_loss callback raised")

    async def batches(self, limit: int = DEFAULT_BATCH) -> AsyncIterator[list[dict[str, Any]]]:
        """Lists of up to ``limit`` events until closed: ``async for batch in ...``."""
        while True:
            try:
                batch = await self.get_batch(limit)
            except StopAsyncIteration:
                return
            yield batch

    async def marked_batches(
        self, limit: int = DEFAULT_BATCH
    ) -> AsyncIterator[tuple[list[dict[str, Any]], StreamMark | None]]:
        """``(events, mark)`` pairs of :meth:`get_marked_batch` until closed."""
        while True:
            try:
                pair = await self.get_marked_batch(limit)
            except StopAsyncIteration:
                return
            yield pair

    def __aiter__(self) -> AsyncReceiver:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return (await self.get_batch(1))[0]

    # -- what it can tell -----------------------------------------------------------------

    @property
    def receiver(self) -> Receiver | None:
        """The underlying Receiver, once started."""
        return self._receiver

    @property
    def receiver_stats(self) -> ReceiverStats | None:
        """The Receiver's counters (messages, rejected, lost events...), once started."""
        return None if self._receiver is None else self._receiver.stats

    @property
    def connected(self) -> bool:
        """Whether the Receiver holds a subscription now."""
        receiver = self._receiver
        return receiver is not None and receiver.connected and not self._finished

    @property
    def running(self) -> bool:
        """Whether the worker thread is consuming."""
        return self._thread is not None and not self._finished and not self._closed

    @property
    def qsize(self) -> int:
        """Events waiting for the event loop."""
        return len(self._queue)

    def lag(self, now: float | None = None) -> float:
        """Seconds the oldest queued event has waited since it was received (0 if none)."""
        queue = self._queue
        try:
            received = queue[0].get("local_received")
        except IndexError:
            return 0.0
        if not isinstance(received, float):
            return 0.0
        return max(0.0, (time.time() if now is None else now) - received)

    def __repr__(self) -> str:
        return f"<AsyncReceiver queued={len(self._queue)}/{self.maxsize} {self._receiver!r}>"
