"""``evcore dump``: print every event as it arrives, one line each."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from evcore.cli.common import safe_url, url_argument
from evcore.cli.dumper import Dumper
from evcore.cli.source import EventSource
from evcore.cli.streamopts import stream_from, stream_options
from evcore.cli.watch import Link
from evcore.event import group_from


class EventFilter:
    """Keep events whose type matches one of ``types`` (globs) and whose group is in
    ``groups``; an empty criterion keeps everything."""

    def __init__(self, types: Sequence[str] = (), groups: Sequence[str] = ()) -> None:
        self.types = tuple(types)
        self.groups = frozenset(groups)

    def __call__(self, event: dict[str, Any]) -> bool:
        type = str(event.get("type", ""))
        if self.groups and group_from(type) not in self.groups:
            return False
        return not self.types or any(fnmatch.fnmatchcase(type, p) for p in self.types)


def _say(message: str) -> None:
    click.echo(f"-> {message}", err=True)


def _report(link: Link) -> None:
    if link.connected:
        if link.losses:
            _say("connection restored")
    else:
        _say(f"connection lost ({link.error}), reconnecting")


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the exit flush cannot fail."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@click.command()
@url_argument()
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line.")
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    help="Only events of this type; globs allowed (task-*). Repeatable.",
)
@click.option(
    "--group",
    "groups",
    multiple=True,
    metavar="GROUP",
    help="Only events of this group (task, worker, ...). Repeatable.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--timeout", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option("--wait", is_flag=True, help="Keep retrying if the broker is unreachable at start.")
@stream_options()
def dump(
    url: str,
    as_json: bool,
    types: tuple[str, ...],
    groups: tuple[str, ...],
    limit: int | None,
    timeout: float | None,
    wait: bool,
    consumer_group: str | None = None,
    member: str | None = None,
    start: str | None = None,
) -> None:
    """Print the events published on the broker at URL, one line each, as they arrive.

    The lines are those of ``celery events --dump``. URL defaults to $EVCORE_URL.
    """
    keep = EventFilter(types, groups)
    dumper = Dumper()
    printed = 0
    stream = stream_from(consumer_group, member, start)
    with EventSource(url, wait=wait, link=Link(on_change=_report), stream=stream) as source:
        _say(f"evcore dump: capturing from {safe_url(url)}")
        if not source.link.connected:
            _say(f"cannot reach the broker yet ({source.link.error}), retrying")
        try:
            for event in source.receiver.itercapture(timeout=timeout):
                if not keep(event):
                    continue
                line = json.dumps(event, default=str) if as_json else dumper.format(event)
                click.echo(line)
                printed += 1
                if limit is not None and printed >= limit:
                    break
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:
            _silence_stdout()
