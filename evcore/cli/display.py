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

QUIT_KEYS = frozenset("qQ")


@contextlib.contextmanager
def _wake_on_resize(wake: threading.Event) -> Iterator[None]:
    """Redraw at once when the terminal is resized (SIGWINCH), where that signal exists."""
    sigwinch = getattr(signal, "SIGWINCH", None)
    if sigwinch is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(sigwinch, lambda signum, frame: wake.set())
    try:
        yield
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
    wake = threading.Event()

    def on_key(char: str) -> None:
        if char in QUIT_KEYS:
            stop.set()
            wake.set()

    deadline = None if duration is None else time.monotonic() + duration
    with (
        KeyReader(on_key),
        _wake_on_resize(wake),
        Live(console=console, screen=True, auto_refresh=False, transient=True) as live,
    ):
        try:
            while not stop.is_set() and monitor.running:
                extra = notes()
                frame = monitor.snapshot(_frame_rows(monitor, console, extra), extra)
                live.update(render(frame), refresh=True)
                wait = REFRESH_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        break
                wake.wait(wait)
                wake.clear()
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
