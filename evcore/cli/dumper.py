"""Format events as one readable line each, the way ``celery events --dump`` prints them.

``<hostname> [<timestamp>] <human type>: <task> <fields>`` for task events, where ``<task>``
is ``name(uuid) args=... kwargs=...`` remembered from the task's ``task-sent`` or
``task-received``, and ``<hostname> [<timestamp>] <human type>: <fields>`` for the others.
Each line is passed through :func:`~evcore.cli.plain.visible`: whatever the event holds, no
control character or escape sequence reaches the terminal.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from evcore.cli.plain import visible
from evcore.event import group_from

#: How many tasks' descriptions are remembered for their later events.
TASK_CACHE_SIZE = 0xFFF

_HUMAN_TYPES = {
    "worker-online": "started",
    "worker-offline": "shutdown",
    "worker-heartbeat": "heartbeat",
}

#: Keys of task-sent / task-received that make up a task's description.
_DESCRIPTION_KEYS = ("name", "args", "kwargs")


def human_type(type: str) -> str:
    """``worker-online`` -> ``started``; others lower-cased, dashes as spaces."""
    type = type.lower()
    return _HUMAN_TYPES.get(type) or type.replace("-", " ")


def format_timestamp(timestamp: Any) -> str:
    """A UTC epoch as Celery's dumper prints it, e.g. ``2023-11-14 22:13:21.5+00:00``."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        return str(timestamp)
    try:
        return str(datetime.fromtimestamp(timestamp, timezone.utc))
    except (OverflowError, OSError, ValueError):
        return str(timestamp)


def format_fields(fields: dict[str, Any]) -> str:
    """``k=v`` pairs sorted by key, joined by ``, ``."""
    return ", ".join(f"{key}={fields[key]}" for key in sorted(fields))


class Dumper:
    """Turn events into dump lines, remembering each task's name and arguments."""

    def __init__(self, cache_size: int = TASK_CACHE_SIZE) -> None:
        self.cache_size = cache_size
        self._tasks: OrderedDict[str, str] = OrderedDict()

    def _describe(self, uuid: str, type: str, fields: dict[str, Any]) -> str:
        if type in ("task-sent", "task-received"):
            name, args, kwargs = (fields.pop(key, None) for key in _DESCRIPTION_KEYS)
            description = f"{name}({uuid}) args={args} kwargs={kwargs}"
            self._tasks[uuid] = description
            self._tasks.move_to_end(uuid)
            while len(self._tasks) > self.cache_size:
                self._tasks.popitem(last=False)
            return description
        description = self._tasks.get(uuid, "")
        if description:
            self._tasks.move_to_end(uuid)
        return description

    def format(self, event: dict[str, Any]) -> str:
        """The dump line of ``event`` (which is left unchanged), controls made visible."""
        fields = dict(event)
        type = str(fields.pop("type", "")).lower()
        hostname = fields.pop("hostname", "?")
        timestamp = format_timestamp(fields.pop("timestamp", None))
        head = f"{hostname} [{timestamp}] {human_type(type)}"
        if group_from(type) == "task" and "uuid" in fields:
            task = self._describe(str(fields.pop("uuid")), type, fields)
            rest = format_fields(fields)
            line = f"{head}{':' if rest else ''} {task} {rest}"
        else:
            rest = format_fields(fields)
            line = f"{head}{':' if rest else ''} {rest}"
        return visible(line.rstrip())
