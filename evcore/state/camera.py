"""A camera that hands the State to a callback at a fixed rate (Celery's ``Polaroid``).

It runs its own daemon thread, so it works beside a Receiver that blocks the main
thread. Each shot runs with ingestion paused (under :meth:`State.freeze_while`), so
``on_shutter`` sees a consistent state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar

from evcore.state.cluster import State

logger = logging.getLogger("evcore.state.camera")

_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(rate: str | float | None) -> float | None:
    """Events per second from a rate such as ``'100/m'``, ``'2/h'``, ``'0.5/s'`` or ``5``.

    >>> parse_rate("120/m"), parse_rate("2/h"), parse_rate(3), parse_rate(None)
    (2.0, 0.0005555555555555556, 3.0, None)
    """
    if not rate:
        return None
    if isinstance(rate, str):
        count, _, unit = rate.partition("/")
        try:
            return float(count) / _RATE_UNITS[unit or "s"]
        except (KeyError, ValueError):
            raise ValueError(
                f"invalid rate {rate!r}: expected '<n>/s', '<n>/m' or '<n>/h'"
            ) from None
    return float(rate)


class TokenBucket:
    """At most ``capacity`` actions at once, refilled at ``fill_rate`` per second."""

    __slots__ = ("_clock", "_stamp", "_tokens", "capacity", "fill_rate")

    def __init__(
        self, fill_rate: float, capacity: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.fill_rate = fill_rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._stamp = clock()

    def can_consume(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if available and say whether that was possible."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.fill_rate)
        self._stamp = now
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False


class Camera:
    """Call :meth:`on_shutter` with the State every ``freq`` seconds, and cleanup hourly.

    ``maxrate`` (e.g. ``'100/m'``) caps the shots actually taken; ``cleanup_freq`` is the
    period of :meth:`cleanup`. Override :meth:`on_shutter` / :meth:`on_cleanup` in a
    subclass or pass callables. Use as a context manager, or :meth:`install` then
    :meth:`cancel` (which takes one last shot). ``clear_after`` empties the State after
    every shot.
    """

    clear_after: ClassVar[bool] = False

    def __init__(
        self,
        state: State,
        freq: float = 1.0,
        maxrate: str | float | None = None,
        cleanup_freq: float = 3600.0,
        *,
        on_shutter: Callable[[State], Any] | None = None,
        on_cleanup: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.freq = freq
        self.cleanup_freq = cleanup_freq
        rate = parse_rate(maxrate)
        self.maxrate = None if rate is None else TokenBucket(rate, clock=clock)
        self._shutter_callback = on_shutter
        self._cleanup_callback = on_cleanup
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_shutter(self, state: State) -> None:
        """Called with the (frozen) state for every shot; override or pass ``on_shutter``."""
        if self._shutter_callback is not None:
            self._shutter_callback(state)

    def on_cleanup(self) -> None:
        """Called every ``cleanup_freq`` seconds; override or pass ``on_cleanup``."""
        if self._cleanup_callback is not None:
            self._cleanup_callback()

    def shutter(self) -> None:
        """Take a shot unless ``maxrate`` forbids it now."""
        if self.maxrate is None or self.maxrate.can_consume():
            self.on_shutter(self.state)

    def capture(self) -> None:
        """Take a shot with ingestion paused (clearing afterwards if ``clear_after``)."""
        self.state.freeze_while(self.shutter, clear_after=self.clear_after)

    def cleanup(self) -> None:
        """Run :meth:`on_cleanup`."""
        self.on_cleanup()

    def install(self) -> None:
        """Start taking shots from a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="evcore-camera", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop the thread, then take one last shot so that nothing received is missed."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        if thread is not threading.current_thread():
            thread.join()
        self._thread = None
        self.capture()

    def _run(self) -> None:
        now = self._clock()
        next_shot, next_cleanup = now + self.freq, now + self.cleanup_freq
        while not self._stop.wait(max(0.0, min(next_shot, next_cleanup) - self._clock())):
            now = self._clock()
            if now >= next_shot:
                self._safely(self.capture)
                next_shot = max(next_shot + self.freq, now)
            if now >= next_cleanup:
                self._safely(self.cleanup)
                next_cleanup = max(next_cleanup + self.cleanup_freq, now)

    @staticmethod
    def _safely(action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:
            logger.exception("camera callback failed")

    def __enter__(self) -> Camera:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cancel()


#: Celery's name for the camera.
Polaroid = Camera
