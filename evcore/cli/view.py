"""Draw a monitor snapshot with rich: a status line, the workers and the recent tasks.

The snapshot is plain data taken from the State under its lock; drawing it needs no lock.
Every string that came from the broker is drawn through :func:`cell` (plain
:class:`~rich.text.Text`, controls made visible), never as console markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from evcore.cli.plain import CELL_LIMIT, visible

STATE_STYLES = {
    "SUCCESS": "green",
    "FAILURE": "bold red",
    "RETRY": "yellow",
    "REVOKED": "magenta",
    "REJECTED": "red",
    "STARTED": "cyan",
    "RECEIVED": "blue",
    "PENDING": "dim",
}

#: Lines a frame uses besides the worker and task rows: title, status, its error line,
#: two blank lines, two table headers, the legend and the key help.
FIXED_LINES = 9

#: The line under the tasks table saying what it shows.
TASKS_LEGEND = "tasks: newest event first; AGE: time since the task's last event"


@dataclass(frozen=True)
class WorkerRow:
    hostname: str
    online: bool
    heartbeat_age: float | None
    active: int | None
    processed: int | None
    loadavg: Sequence[float] | None


@dataclass(frozen=True)
class TaskRow:
    uuid: str
    name: str | None
    state: str
    host: str | None
    runtime: float | None
    age: float | None
    #: The exception of a failed or retried task (``ValueError('x')``), as sent.
    exception: str | None = None


@dataclass(frozen=True)
class ConnectionStatus:
    """Connection facts shown on the status line."""

    connected: bool
    error: str | None = None
    #: Seconds since the connection went up or down.
    for_seconds: float = 0.0
    ever_connected: bool = False
    reconnects: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Everything one frame shows."""

    title: str
    connection: ConnectionStatus
    events: int
    rate: float
    tasks_seen: int
    tasks_kept: int
    workers: Sequence[WorkerRow] = ()
    tasks: Sequence[TaskRow] = ()
    notes: Sequence[str] = field(default_factory=tuple)


def cell(value: object, style: str = "", limit: int = CELL_LIMIT) -> Text:
    """A table cell or line showing ``value`` as plain text (see :mod:`evcore.cli.plain`)."""
    return Text(visible(value, limit), style=style)


def format_age(seconds: float | None) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``2h07m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_runtime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def status_line(snapshot: Snapshot) -> Text:
    status = snapshot.connection
    text = Text()
    if status.connected:
        text.append("● connected", style="bold green")
    elif status.ever_connected:
        text.append(
            f"✖ connection lost {format_age(status.for_seconds)} ago, retrying", style="bold red"
        )
    else:
        text.append("○ connecting, retrying", style="bold yellow")
    alive = sum(1 for worker in snapshot.workers if worker.online)
    text.append(
        f"  events {snapshot.events} ({snapshot.rate:.1f}/s)"
        f"  tasks {snapshot.tasks_seen}"
        f"  workers {alive}/{len(snapshot.workers)} online"
        f"  reconnects {status.reconnects}"
    )
    if not status.connected and status.error:
        text.append(f"\n  {visible(status.error, CELL_LIMIT)}", style="red")
    return text


def workers_table(rows: Sequence[WorkerRow]) -> Table:
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold reverse")
    table.add_column("WORKER", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("STATUS", width=7, no_wrap=True)
    table.add_column("HEARTBEAT", justify="right", width=9, no_wrap=True)
    table.add_column("ACTIVE", justify="right", width=6, no_wrap=True)
    table.add_column("PROCESSED", justify="right", width=9, no_wrap=True)
    table.add_column("LOAD", width=14, no_wrap=True, overflow="ellipsis")
    for row in rows:
        status = Text("ONLINE", "green") if row.online else Text("OFFLINE", "red")
        load = " ".join(f"{value:.2f}" for value in row.loadavg) if row.loadavg else "-"
        table.add_row(
            cell(row.hostname),
            status,
            format_age(row.heartbeat_age),
            "-" if row.active is None else str(row.active),
            "-" if row.processed is None else str(row.processed),
            load,
        )
    if not rows:
        table.add_row(Text("no workers seen yet", style="dim"), "", "", "", "", "")
    return table


def tasks_table(rows: Sequence[TaskRow]) -> Table:
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold reverse")
    table.add_column("STATE", width=8, no_wrap=True)
    table.add_column("TASK", ratio=2, no_wrap=True, overflow="ellipsis")
    table.add_column("UUID", ratio=2, no_wrap=True, overflow="ellipsis", max_width=36)
    table.add_column("WORKER", ratio=2, no_wrap=True, overflow="ellipsis")
    table.add_column("RUNTIME", justify="right", width=8, no_wrap=True)
    table.add_column("AGE", justify="right", width=6, no_wrap=True)
    table.add_column("EXCEPTION", ratio=2, no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(
            cell(row.state, STATE_STYLES.get(row.state, "bold"), limit=8),
            cell(row.name or "?"),
            cell(row.uuid),
            cell(row.host or "-"),
            format_runtime(row.runtime),
            format_age(row.age),
            cell(row.exception or "", "red"),
        )
    if not rows:
        table.add_row("", Text("no tasks seen yet", style="dim"), "", "", "", "", "")
    return table


def render(snapshot: Snapshot, interactive: bool = True) -> RenderableType:
    """The whole frame for ``snapshot``."""
    parts: list[RenderableType] = [
        cell(snapshot.title, "bold"),
        status_line(snapshot),
        *(cell(note, "dim") for note in snapshot.notes),
        Text(),
        workers_table(snapshot.workers),
        Text(),
        tasks_table(snapshot.tasks),
        Text(TASKS_LEGEND, style="dim"),
    ]
    if interactive:
        parts.append(Text("q quit", style="dim"))
    return Group(*parts)


def task_rows_that_fit(height: int, workers: int, notes: int = 0) -> int:
    """How many task rows fit on a screen ``height`` lines high beside ``workers`` rows."""
    return max(1, height - FIXED_LINES - max(1, workers) - notes)
