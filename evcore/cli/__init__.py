"""The ``evcore`` command line: demo, top, dump and transports.

Only this package imports click and rich (the ``cli`` extra); the rest of evcore does not.
"""

from __future__ import annotations

import click

from evcore import __version__
from evcore.cli.common import EvcoreGroup, configure_logging
from evcore.cli.demo import demo
from evcore.cli.dump import dump
from evcore.cli.monitor_cmd import monitor
from evcore.cli.relay import relay
from evcore.cli.serve import serve
from evcore.cli.top import top
from evcore.cli.transports_cmd import transports


@click.group(cls=EvcoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="evcore")
@click.option("-v", "--verbose", count=True, help="Log evcore's warnings (-vv: debug) to stderr.")
def cli(verbose: int) -> None:
    """Watch and simulate Celery events over any evcore transport.

    Start with "evcore demo"; point "evcore top" or "evcore dump" at a broker URL
    (or set EVCORE_URL) to watch a real cluster.
    """
    configure_logging(verbose)


cli.add_command(demo)
cli.add_command(top)
cli.add_command(dump)
cli.add_command(transports)
cli.add_command(monitor)
cli.add_command(relay)
cli.add_command(serve)


def main() -> None:
    """Entry point of the ``evcore`` console script."""
    cli(prog_name="evcore")


__all__ = ["cli", "main"]
