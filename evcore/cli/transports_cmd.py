"""``evcore transports``: list the installed transports."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from evcore.registry import available_transports


@click.command()
def transports() -> None:
    """List the installed transports: URL scheme, the class serving it, and the
    distribution providing it."""
    infos = available_transports()
    if not infos:
        click.echo("no transports installed")
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("SCHEME", style="bold")
    table.add_column("TRANSPORT")
    table.add_column("DISTRIBUTION")
    for info in infos:
        provider = f"{info.distribution} {info.version}".strip()
        table.add_row(f"{info.scheme}://", info.target, provider)
    console = Console(soft_wrap=True)
    # Never cut a name short: a terminal narrower than the table gets long lines instead.
    width = console.measure(table, options=console.options.update_width(10_000)).maximum
    if width > console.width:
        console = Console(soft_wrap=True, width=width)
    console.print(table)
