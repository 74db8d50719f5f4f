"""``evcore relay SOURCE_URL DEST_URL``: pub/sub events appended to a durable stream."""

from __future__ import annotations

import json
import signal
from types import FrameType

import click

from evcore.cli.common import one_line, safe_url
from evcore.relay import Relay, RelayStats


def stats_line(stats: RelayStats) -> str:
    """The counters as one ``key=value`` line for the log."""
    counters = stats.as_dict()
    reasons = counters.pop("unparseable_by_reason")
    line = " ".join(f"{key}={value}" for key, value in counters.items())
    if reasons:
        line += " (unparseable: " + ", ".join(f"{r}={n}" for r, n in sorted(reasons.items())) + ")"
    return line


@click.command("relay")
@click.argument("source_url", metavar="SOURCE_URL")
@click.argument("dest_url", metavar="DEST_URL")
@click.option("--exchange", default="celeryev", show_default=True, help="The events exchange.")
@click.option(
    "--stats-interval",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds between two counter lines on stderr.",
)
@click.option(
    "--max-buffer",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Events held while the destination is slow or away; more are dropped and counted.",
)
@click.option(
    "--max-buffer-mb",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Megabytes of messages held while the destination is slow or away.",
)
@click.option(
    "--batch",
    "batch_size",
    type=click.IntRange(min=1),
    default=1_000,
    show_default=True,
    help="Most messages per append (one pipelined write).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="On exit, seconds spent appending what is still buffered.",
)
@click.option(
    "--queue",
    help="amqp:// sources: read from this named durable queue, kept by the broker while the "
    "relay is away (one name per relay; delete it when retiring the relay).",
)
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
def relay(
    source_url: str,
    dest_url: str,
    exchange: str,
    stats_interval: float,
    max_buffer: int,
    max_buffer_mb: int,
    batch_size: int,
    drain_timeout: float,
    queue: str | None,
    duration: float | None,
) -> None:
    """Append every event published on SOURCE_URL (pub/sub, where Celery workers send
    them) to the durable streams at DEST_URL, in arrival order.

    Several relays may run on the same source: readers drop the copies by the key each
    event is stamped with. Counters go to stderr every --stats-interval seconds; on exit
    (SIGTERM, SIGINT, --duration) the final counters are printed as one JSON line.
    """
    engine = Relay(
        source_url,
        dest_url,
        exchange=exchange,
        max_buffer=max_buffer,
        max_buffer_bytes=max_buffer_mb * 1024 * 1024,
        batch_size=batch_size,
        queue=queue,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        engine.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"evcore relay: {safe_url(source_url)} -> {safe_url(dest_url)}", err=True)
    engine.start()
    if engine.subscribed.wait(5.0):
        click.echo("evcore relay: subscribed to the source", err=True)
    else:
        click.echo("evcore relay: cannot reach the source yet; retrying", err=True)
    try:
        engine.run(
            duration=duration,
            stats_interval=stats_interval,
            on_stats=lambda stats: click.echo(f"evcore relay: {stats_line(stats)}", err=True),
        )
    finally:
        engine.close(drain_timeout)
        click.echo(f"evcore relay: stopped: {stats_line(engine.stats)}", err=True)
    click.echo(json.dumps(engine.stats.as_dict()))
    if engine.error is not None:
        raise click.ClickException(f"the relay stopped: {one_line(str(engine.error))}")
