"""Node names and local time facts stamped on every event."""

from __future__ import annotations

import os
import socket
import time


def anon_nodename() -> str:
    """The node name of a sender without one: ``gen<pid>@<host>``, as Celery's clients use."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def utcoffset() -> float:
    """This host's offset in hours *west* of UTC, as Celery 5.7 sends it (a float)."""
    west = time.altzone if time.daylight and time.localtime().tm_isdst > 0 else time.timezone
    return west / 3600
