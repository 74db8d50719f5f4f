"""``evcore top``: a live view of a cluster's workers and tasks."""

from __future__ import annotations

import threading
from collections.abc import Callable

import click
from rich.console import Console

from evcore.cli.common import safe_url, url_argument
from evcore.cli.display import print_once, run_live
from evcore.cli.monitor import Monitor
from evcore.cli.streamopts import stream_from, stream_options
from evcore.errors import EvcoreError

#: Seconds ``--once`` collects events for, unless ``--duration`` says otherwise.
ONCE_SECONDS = 3.0


def raise_failure(monitor: Monitor) -> None:
    """Re-raise what stopped the monitor's Receiver, as a one-line error."""
    failure = monitor.failure
    if failure is None or isinstance(failure, KeyboardInterrupt):
        return
    if isinstance(failure, EvcoreError):
        raise failure
    raise click.ClickException(f"the event receiver stopped: {failure!r}")


def show(
    monitor: Monitor,
    console: Console,
    once: bool,
    duration: float | None,
    stop: threading.Event | None = None,
    notes: Callable[[], tuple[str, ...]] = tuple,
) -> None:
    """Run the live view on a terminal, else collect and print one frame."""
    if once or not console.is_terminal:
        if once and duration is None:
            duration = ONCE_SECONDS
        print_once(monitor, console, duration, stop, notes)
    else:
        run_live(monitor, console, duration, stop, notes)


@click.command()
@url_argument()
@click.option(
    "--once",
    is_flag=True,
    help=f"Collect events for --duration (default {ONCE_SECONDS:g}s), print one frame, exit.",
)
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option("--wait", is_flag=True, help="Keep retrying if the broker is unreachable at start.")
@click.option(
    "--max-tasks",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Tasks kept in memory.",
)
@stream_options()
def top(
    url: str,
    once: bool,
    duration: float | None,
    wait: bool,
    max_tasks: int,
    consumer_group: str | None = None,
    member: str | None = None,
    start: str | None = None,
) -> None:
    """Watch the workers and tasks of the cluster at URL, live (q or Ctrl-C quits).

    URL defaults to $EVCORE_URL. When the output is not a terminal, or with --once, one
    frame is printed at the end instead.
    """
    stream = stream_from(consumer_group, member, start)
    monitor = Monitor(
        url, title=f"evcore top  {safe_url(url)}", wait=wait, max_tasks=max_tasks, stream=stream
    )
    try:
        monitor.start()
        show(monitor, Console(), once, duration)
    finally:
        monitor.close()
    raise_failure(monitor)
