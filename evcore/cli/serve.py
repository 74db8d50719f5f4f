"""``evcore serve``: Prometheus metrics and a Flower-compatible API over HTTP."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from types import SimpleNamespace

import click

from evcore.cli.common import safe_url, url_argument
from evcore.cli.demo import SimulatorThread
from evcore.cli.streamopts import parse_start
from evcore.errors import MissingDependency
from evcore.gc_tuning import tune_gc
from evcore.registry import load_factory, scheme_of
from evcore.simulator import ClusterSimulator
from evcore.state.liveness import LivenessPolicy
from evcore.state.retention import RetentionPolicy
from evcore.transport import EARLIEST

#: Environment variables holding the secrets, so they stay out of process listings.
BASIC_AUTH_ENVVAR = "EVCORE_SERVE_BASIC_AUTH"
TOKEN_ENVVAR = "EVCORE_SERVE_TOKEN"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from ``'512M'``, ``'2GiB'`` or a plain number."""
    found = _SIZE.match(text)
    if not found:
        raise click.BadParameter(f"{text!r} is not a size such as 512M or 2G")
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


def parse_retention(values: tuple[str, ...]) -> dict[str, float]:
    """``STATE=SECONDS`` pairs (``FAILURE=604800``) as a mapping."""
    retention = {}
    for value in values:
        state, equals, seconds = value.partition("=")
        try:
            retention[state.strip().upper()] = float(seconds)
        except ValueError:
            equals = ""
        if not equals or not state.strip() or retention.get(state.strip().upper(), 0) <= 0:
            raise click.BadParameter(f"{value!r} is not STATE=SECONDS with SECONDS > 0")
    return retention


def _load_serve() -> SimpleNamespace:
    """The web stack's modules, imported only when serving (the ``serve`` extra)."""
    try:
        # The web stack is an optional dependency (the serve extra), imported on use.
        from evcore.serve import auth, monitor, runner  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependency(
            f"evcore serve needs its web stack ({exc.name or exc}): pip install 'evcore[serve]'"
        ) from exc
    return SimpleNamespace(auth=auth, monitor=monitor, runner=runner)


@click.command()
@url_argument()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=5555, show_default=True)
@click.option("--demo", is_flag=True, help="With memory://, also run a simulated cluster.")
@click.option(
    "--basic-auth",
    envvar=BASIC_AUTH_ENVVAR,
    metavar="USER:PASSWORD",
    help=f"Require HTTP basic auth (or set {BASIC_AUTH_ENVVAR}).",
)
@click.option(
    "--token",
    envvar=TOKEN_ENVVAR,
    metavar="TOKEN",
    help=f"Require 'Authorization: Bearer TOKEN' (or set {TOKEN_ENVVAR}).",
)
@click.option("--max-tasks", type=click.IntRange(0), default=10_000, show_default=True)
@click.option("--max-workers", type=click.IntRange(0), default=5_000, show_default=True)
@click.option(
    "--memory-budget", metavar="SIZE", help="Bound the tasks' estimated memory (e.g. 512M)."
)
@click.option(
    "--retain",
    "retain",
    multiple=True,
    metavar="STATE=SECONDS",
    help="Forget tasks in STATE this long after their last event (repeatable).",
)
@click.option(
    "--late-after",
    type=float,
    default=1.25,
    show_default=True,
    help="Heartbeat intervals of silence before a worker is late.",
)
@click.option(
    "--offline-after",
    type=float,
    default=2.0,
    show_default=True,
    help="Heartbeat intervals of silence before a worker is offline.",
)
@click.option(
    "--purge-after",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds offline before a worker is forgotten.",
)
@click.option(
    "--lost-after",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds of worker silence (or after a stream gap) before its unfinished "
    "tasks are marked possibly lost.",
)
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Restore the State from this file at start; save it periodically and on exit.",
)
@click.option("--save-interval", type=click.FloatRange(min=1), default=60.0, show_default=True)
@click.option(
    "--start",
    help="Durable URLs: where to read a partition the state file holds no position for: "
    "earliest (default: rebuild from the retained history), latest, or "
    "PARTITION:POSITION[,...].",
)
@click.option(
    "--max-label-sets",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Label sets per metric before new ones go to the overflow series.",
)
@click.option(
    "--result-backend",
    envvar="EVCORE_RESULT_BACKEND",
    metavar="URL",
    help="Celery's Redis result backend: fill in the final state of possibly lost tasks.",
)
@click.option(
    "--ready-max-lag",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="/readyz fails while applying events lags more than this (seconds).",
)
def serve(
    url: str,
    host: str,
    port: int,
    demo: bool,
    basic_auth: str | None,
    token: str | None,
    max_tasks: int,
    max_workers: int,
    memory_budget: str | None,
    retain: tuple[str, ...],
    late_after: float,
    offline_after: float,
    purge_after: float,
    lost_after: float,
    state_file: Path | None,
    save_interval: float,
    start: str | None,
    max_label_sets: int,
    ready_max_lag: float,
    result_backend: str | None,
) -> None:
    """Serve Prometheus metrics and a Flower-compatible REST API for the cluster at URL.

    Read-only; listens on 127.0.0.1 unless told otherwise. Put it behind a TLS proxy
    before exposing it, with --basic-auth or --token. Stops cleanly on SIGTERM or Ctrl-C.
    """
    web = _load_serve()
    load_factory(scheme_of(url))  # a bad URL or missing client library fails here
    if demo and not url.startswith("memory://"):
        raise click.UsageError("--demo publishes a simulated cluster on memory:// only")
    if demo and url == "memory://":
        url = f"memory://evcore-serve-demo-{uuid.uuid4().hex[:8]}"
    try:
        liveness = LivenessPolicy(late_after, offline_after, purge_after or None, lost_after)
        retention = RetentionPolicy(
            parse_retention(retain),
            parse_size(memory_budget) if memory_budget else None,
        )
        credentials = None
        if basic_auth is not None or token is not None:
            credentials = web.auth.Credentials(basic=basic_auth, token=token)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    options = web.monitor.MonitorOptions(
        max_tasks=max_tasks or None,
        max_workers=max_workers or None,
        liveness=liveness,
        retention=retention,
        max_label_sets=max_label_sets,
        ready_max_lag=ready_max_lag,
        state_file=state_file,
        result_backend=result_backend,
        save_interval=save_interval,
        stream_start=parse_start(start) if start is not None else EARLIEST,
    )
    monitor = web.monitor.Monitor(url, options)
    tune_gc()  # after the restore: the restored State is never scanned again
    simulation = _start_demo(url) if demo else None

    def ready(bound_host: str, bound_port: int) -> None:
        click.echo(
            f"-> evcore serve: {safe_url(url)} on http://{bound_host}:{bound_port}/ "
            "(/metrics, /api/tasks, /api/workers); Ctrl-C or SIGTERM to stop",
            err=True,
        )

    try:
        web.runner.run(monitor, host, port, credentials=credentials, on_ready=ready)
    finally:
        if simulation is not None:
            simulation.stop()
    click.echo(f"-> stopped after {monitor.state.event_count} events", err=True)


def _start_demo(url: str) -> SimulatorThread:
    running = SimulatorThread(ClusterSimulator(url, workers=3, rate=5.0), None)
    running.start()
    return running
