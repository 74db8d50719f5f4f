"""The options through which ``evcore top``, ``dump`` and ``monitor`` read durable streams."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from evcore.transport import EARLIEST, LATEST, Start, StreamOptions

F = TypeVar("F", bound=Callable[..., Any])


def parse_start(value: str) -> Start | dict[int, str]:
    """``earliest``, ``latest``, or positions as ``PARTITION:POSITION[,...]``."""
    if value in (EARLIEST, LATEST):
        return value
    positions: dict[int, str] = {}
    for item in value.split(","):
        partition, sep, position = item.partition(":")
        if not sep or not partition.strip().isdigit() or not position.strip():
            raise click.BadParameter(
                f"expected earliest, latest or PARTITION:POSITION[,...], got {value!r}",
                param_hint="--start",
            )
        positions[int(partition)] = position.strip()
    return positions


def stream_options(group_flag: str = "--consumer-group") -> Callable[[F], F]:
    """Add ``--consumer-group``, ``--member`` and ``--start`` to a command."""

    def decorate(command: F) -> F:
        command = click.option(
            "--start",
            help="Durable URLs: where to begin in each partition: earliest (history), latest "
            "(default), or PARTITION:POSITION[,...].",
        )(command)
        command = click.option(
            "--member", help="Durable URLs: this process's name in the consumer group."
        )(command)
        return click.option(
            group_flag,
            "consumer_group",
            help="Durable URLs: join this consumer group, sharing the partitions with its "
            "other members.",
        )(command)

    return decorate


def stream_from(
    consumer_group: str | None, member: str | None, start: str | None
) -> StreamOptions | None:
    """The StreamOptions the options ask for, or None when none was given."""
    if consumer_group is None and member is None and start is None:
        return None
    return StreamOptions(
        group=consumer_group,
        member=member,
        start=parse_start(start) if start is not None else LATEST,
    )
