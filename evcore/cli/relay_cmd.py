"""``evcore relay SOURCE DEST``: append a pub/sub source's events to a durable stream."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading

import click

from evcore.cli.common import safe_url
from evcore.relay import Relay


@click.command("relay")
@click.argument("source", metavar="SOURCE_URL")
@click.argument("destination", metavar="DEST_URL")
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option(
    "--report-every",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds between two lines of counters on stderr.",
)
@click.option("--name", help="This relay's name (its sequence headers' hostname).")
def relay(
    source: str, destination: str, duration: float | None, report_every: float, name: str | None
) -> None:
    """Subscribe to SOURCE_URL (pub/sub, e.g. Celery's redis:// or amqp://) and append every
    event, in arrival order, to the durable DEST_URL (e.g. redis+streams://).

    Several relays may run on one source: monitors drop the copies by idempotency key. On
    exit, the counters are printed as one JSON line.
    """
    forwarder = Relay(source, destination, name=name)
    signal.signal(signal.SIGTERM, lambda signum, frame: forwarder.stop())
    done = threading.Event()

    def report() -> None:
        while not done.wait(report_every):
            counters = dataclasses.asdict(forwarder.stats)
            click.echo(f"evcore relay: {json.dumps(counters)}", err=True)

    click.echo(f"evcore relay: {safe_url(source)} -> {safe_url(destination)}", err=True)
    reporter = threading.Thread(target=report, name="evcore-relay-report", daemon=True)
    reporter.start()
    try:
        forwarder.run(duration=duration)
    except KeyboardInterrupt:
        pass
    finally:
        done.set()
        forwarder.close()
    click.echo(json.dumps(dataclasses.asdict(forwarder.stats)))
