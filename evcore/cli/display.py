"""Show a Monitor on the terminal: redrawn in place until ``q``, Ctrl-C or a deadline, or
printed once when the output is not a terminal."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.live import Live

from evcore.cli.keys import KeyReader
from evcore.cli.monitor import Monitor
from evcore.cli.view import render, task_rows_that_fit

#: Seconds between two frames.
REFRESH_SECONDS = 0.5

#: How often the wait between frames looks for a key or a resize.
POLL_SECONDS = 0.05

QUIT_KEYS = frozenset("qQ")


class _Resized:
    """Set by the SIGWINCH handler. A plain flag: taking a lock in a signal handler could
    deadlock against the interrupted main thread."""

    flag = False

    def note(self, signum: int, frame: object) -> None:
        self.flag = True


@contextlib.contextmanager
def _watch_resize() -> Iterator[_Resized]:
    """Note terminal resizes (SIGWINCH) so the next frame comes at once, where it exists."""
    resized = _Resized()
    sigwinch = getattr(signal, "SIGWINCH", None)
    if sigwinch is None or threading.current_thread() is not threading.main_thread():
        yield resized
        return
    previous = signal.signal(sigwinch, resized.note)
    try:
        yield resized
    finally:
        signal.signal(sigwinch, previous)


def _frame_rows(monitor: Monitor, console: Console, notes: tuple[str, ...]) -> int:
    workers = min(len(monitor.state.workers), 20)
    return task_rows_that_fit(console.size.height, workers, len(notes))


def run_live(
    monitor: Monitor,
    console: Console,
    duration: float | None = None,
    stop: threading.Event | None = None,
    notes: Callable[[], tuple[str, ...]] = tuple,
) -> None:
    """Redraw the monitor in place until ``q``, Ctrl-C, ``duration`` or ``stop``."""
    stop = stop if stop is not None else threading.Event()

    def on_key(char: str) -> None:
        if char in QUIT_KEYS:
            stop.set()

    deadline = None if duration is None else time.monotonic() + duration
    with (
        KeyReader(on_key),
        _watch_resize() as resized,
        Live(console=console, screen=True, auto_refresh=False, transient=True) as live,
    ):
        try:
            while not stop.is_set() and monitor.running:
                extra = notes()
                frame = monitor.snapshot(_frame_rows(monitor, console, extra), extra)
                live.update(render(frame), refresh=True)
                next_frame = time.monotonic() + REFRESH_SECONDS
                if deadline is not None:
                    if deadline <= time.monotonic():
                        break
                    next_frame = min(next_frame, deadline)
                resized.flag = False
                while not (stop.is_set() or resized.flag):
                    left = next_frame - time.monotonic()
                    if left <= 0:
                        break
                    stop.wait(min(left, POLL_SECONDS))
        except KeyboardInterrupt:
            pass


def print_once(
    monitor: Monitor,
    console: Console,
    duration: float | None = None,
    stop: threading.Event | None = None,
    notes: Callable[[], tuple[str, ...]] = tuple,
    rows: int = 30,
) -> None:
    """Collect events for ``duration`` seconds (or until Ctrl-C or ``stop``), then print
    one frame."""
    stop = stop if stop is not None else threading.Event()
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop.is_set() and monitor.running:
            wait = 0.2
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            stop.wait(wait)
            monitor.rate.update(monitor.state.event_count)
    except KeyboardInterrupt:
        pass
    console.print(render(monitor.snapshot(rows, notes()), interactive=False))
