"""Consume events from asyncio: a Receiver in a worker thread behind a bounded queue."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from evcore.errors import ConfigurationError
from evcore.receiver import Handler, Receiver, ReceiverStats
from evcore.transport import Transport

#: Events queued between the consuming thread and the event loop by default.
DEFAULT_MAXSIZE = 10_000
#: Events handed over by one step of :meth:`AsyncReceiver.batches` at most, by default.
DEFAULT_BATCH = 500
#: How long the consuming thread waits for room before looking at ``closed`` again.
_WAIT_SLICE = 0.2


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


class AsyncReceiver:
    """Receive events in asyncio without blocking the event loop.

    A :class:`~evcore.Receiver` consumes in a worker thread and puts each event on a
    bounded queue; the event loop takes them with ``async for`` (one event at a time) or
    :meth:`batches` (lists, cheaper at high rates). When the queue is full the worker
    thread waits, so the broker's own buffering and limits apply instead of this process
    growing without bound. ``handlers`` run in the worker thread, before the event is
    queued (a thread-safe :class:`~evcore.state.State` may be fed there). The other
    keyword arguments are the Receiver's.

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
        self.maxsize = maxsize
        self.stats = AsyncReceiverStats()
        self._target = transport_or_url
        self._options = receiver_options
        self._handlers = dict(handlers or {})
        self._queue: deque[dict[str, Any]] = deque()
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
        try:
            while not self._closed:
                receiver.capture(timeout=_WAIT_SLICE * 5)
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
        if self._receiver is None and not self._closed:
            await self.start()
        queue = self._queue
        while True:
            with self._room:
                if queue:
                    count = min(limit, len(queue))
                    batch = [queue.popleft() for _ in range(count)]
                    self.stats.delivered += count
                    self._room.notify()
                    return batch
                if self._closed or self._finished:
                    break
                loop = asyncio.get_running_loop()
                waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        if self._failure is not None and not self._closed:
            raise self._failure
        raise StopAsyncIteration

    async def batches(self, limit: int = DEFAULT_BATCH) -> AsyncIterator[list[dict[str, Any]]]:
        """Lists of up to ``limit`` events until closed: ``async for batch in ...``."""
        while True:
            try:
                batch = await self.get_batch(limit)
            except StopAsyncIteration:
                return
            yield batch

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
