"""``evcore monitor``: a resumable State on a durable stream, or a group of N of them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from types import FrameType

import click

from evcore.cli.common import safe_url, url_argument
from evcore.cli.streamopts import parse_start, stream_options
from evcore.gc_tuning import tune_gc
from evcore.streammonitor import StreamMonitor
from evcore.transport import EARLIEST


def _member_args(
    url: str,
    group: str,
    member: str,
    checkpoint: str | None,
    options: list[str],
) -> list[str]:
    args = [sys.executable, "-c", "from evcore.cli import main; main()", "monitor", url]
    args += ["--group", group, "--member", member, *options]
    if checkpoint is not None:
        args += ["--checkpoint", checkpoint]
    return args


@click.command("monitor")
@url_argument()
@stream_options("--group")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    help="Save the State and stream positions here (atomically) and resume from it on start.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=5.0,
    show_default=True,
    help="Seconds between checkpoints.",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds after which a silent member's partitions move to the others.",
)
@click.option(
    "--members",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run this many member processes of --group (checkpoints get a .N suffix).",
)
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option(
    "--idle-exit", type=click.FloatRange(min=0), help="Stop after this many seconds without events."
)
@click.option(
    "--max-tasks", type=click.IntRange(min=1), help="Tasks kept in memory (default: 10000)."
)
def monitor(
    url: str,
    consumer_group: str | None,
    member: str | None,
    start: str | None,
    checkpoint: str | None,
    interval: float,
    lease: float,
    members: int,
    duration: float | None,
    idle_exit: float | None,
    max_tasks: int | None,
) -> None:
    """Keep the State of the cluster at a durable URL, checkpointed and resumable.

    Without a checkpoint the State is built from the earliest retained event (or --start).
    With --group, members share the partitions; --members N starts N such processes here.
    On exit, each prints what it holds as one JSON line.
    """
    if members > 1:
        if consumer_group is None:
            raise click.UsageError("--members needs --group")
        options = ["--interval", str(interval), "--lease", str(lease)]
        for flag, value in (
            ("--start", start),
            ("--duration", duration),
            ("--idle-exit", idle_exit),
            ("--max-tasks", max_tasks),
        ):
            if value is not None:
                options += [flag, str(value)]
        base = member or "member"
        children = [
            subprocess.Popen(
                _member_args(
                    url,
                    consumer_group,
                    f"{base}-{i}",
                    f"{checkpoint}.{i}" if checkpoint else None,
                    options,
                )
            )
            for i in range(members)
        ]

        def forward(signum: int, frame: FrameType | None) -> None:
            for child in children:
                child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        try:
            codes = [child.wait() for child in children]
        except KeyboardInterrupt:
            codes = [child.wait() for child in children]
        if any(codes):
            raise SystemExit(max(codes))
        return

    tune_gc()
    state_options = {"max_tasks_in_memory": max_tasks} if max_tasks else {}
    keeper = StreamMonitor(
        url,
        checkpoint,
        group=consumer_group,
        member=member,
        start=parse_start(start) if start is not None else EARLIEST,
        lease=lease,
        interval=interval,
        state_options=state_options,
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: keeper.stop())
    click.echo(f"evcore monitor: reading {safe_url(url)}", err=True)
    try:
        keeper.run(duration=duration, idle_exit=idle_exit)
    except KeyboardInterrupt:
        pass
    finally:
        held = keeper.stats()
        keeper.close()
    click.echo(json.dumps({"member": member, **held}))
