"""``evcore demo``: a simulated cluster, watched live, with no broker needed."""

from __future__ import annotations

import threading
import uuid

import click
from rich.console import Console

from evcore.cli.common import BrokerUnreachable, safe_url
from evcore.cli.monitor import Monitor
from evcore.cli.top import ONCE_SECONDS, raise_failure, show
from evcore.errors import ConnectionLost
from evcore.simulator import ClusterSimulator


class SimulatorThread:
    """Run a ClusterSimulator in a thread; ``done`` is set when it ends, for any reason."""

    def __init__(self, simulator: ClusterSimulator, duration: float | None) -> None:
        self.simulator = simulator
        self.done = threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(duration,), name="evcore-demo", daemon=True
        )

    def _run(self, duration: float | None) -> None:
        try:
            self.simulator.run(duration)
        except BaseException as exc:
            self.failure = exc
        finally:
            self.done.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the simulation to end (workers go offline) and wait for it."""
        self.simulator.stop()
        self._thread.join(timeout=10.0)


def _summary(simulator: ClusterSimulator) -> str:
    stats = simulator.stats
    return (
        f"published {simulator.events_sent} events: {stats.tasks} tasks, "
        f"{stats.succeeded} succeeded, {stats.failed} failed, {stats.retried} retried, "
        f"{stats.revoked} revoked"
    )


@click.command()
@click.option(
    "--url",
    metavar="URL",
    help="Publish to this broker instead of an in-memory one (watch it with evcore top, "
    "celery events or Flower).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 50),
    default=3,
    show_default=True,
    help="Simulated workers.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help="Tasks sent per second.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    help="Stop after this many seconds (default: until q or Ctrl-C).",
)
@click.option("--no-monitor", is_flag=True, help="Only publish the events; show no monitor.")
@click.option("--once", is_flag=True, help="Print one frame at the end instead of a live view.")
@click.option("--seed", type=int, help="Seed of the simulation, to repeat a run.")
def demo(
    url: str | None,
    workers: int,
    rate: float,
    duration: float | None,
    no_monitor: bool,
    once: bool,
    seed: int | None,
) -> None:
    """Simulate a small Celery cluster and watch it live: no broker needed.

    Workers send heartbeats and run tasks that succeed, fail, retry, get revoked and spawn
    children, publishing exactly the events real Celery workers and clients publish.
    """
    target = url or f"memory://evcore-demo-{uuid.uuid4().hex[:8]}"
    shown = safe_url(target)
    monitor = None
    if not no_monitor:
        monitor = Monitor(target, title=f"evcore demo  {shown}")
    try:
        simulator = ClusterSimulator(target, workers=workers, rate=rate, seed=seed)
        # With a monitor, the monitor keeps time, so the final frame shows the cluster live.
        running = SimulatorThread(simulator, duration if monitor is None else None)
        if monitor is None:
            click.echo(
                f"-> publishing a simulated cluster ({workers} workers, {rate:g} tasks/s) "
                f"to {shown}; Ctrl-C to stop",
                err=True,
            )
        else:
            monitor.start()
        running.start()
        try:
            if monitor is None:
                while not running.done.wait(0.2):
                    pass
            else:
                limit = ONCE_SECONDS if once and duration is None else duration
                notes = lambda: (  # noqa: E731
                    f"simulated: {workers} workers, {rate:g} tasks/s, "
                    f"{simulator.events_sent} events published",
                )
                show(monitor, Console(), once, limit, running.done, notes)
        except KeyboardInterrupt:
            pass
        finally:
            running.stop()
    finally:
        if monitor is not None:
            monitor.close()
    failure = running.failure
    if isinstance(failure, ConnectionLost):
        raise BrokerUnreachable(target, failure)
    if failure is not None and not isinstance(failure, KeyboardInterrupt):
        raise failure
    if monitor is not None:
        raise_failure(monitor)
    click.echo(f"-> {_summary(simulator)}", err=True)
