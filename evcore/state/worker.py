"""Live worker records: fields from worker events, heartbeats and liveness."""

from __future__ import annotations

import logging
import time
from bisect import insort
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, ClassVar

from evcore.state.record import Record

logger = logging.getLogger("evcore.state")

#: A worker is alive until its last heartbeat plus this percentage of ``freq``.
HEARTBEAT_EXPIRE_WINDOW = 200
#: A gap in seconds between send and receive time that is worth a warning.
HEARTBEAT_DRIFT_MAX = 16
#: Hosts remembered so that the drift warning is logged once per host.
_DRIFT_MEMORY = 1000
_drift_warned: set[str] = set()


def heartbeat_expires(
    timestamp: float, freq: float = 60, expire_window: float = HEARTBEAT_EXPIRE_WINDOW
) -> float:
    """When a worker whose last heartbeat was at ``timestamp`` stops counting as alive.

    >>> heartbeat_expires(100.0, freq=2.0)
    104.0
    """
    if isinstance(freq, Decimal):
        freq = float(freq)
    if isinstance(timestamp, Decimal):
        timestamp = float(timestamp)
    return timestamp + freq * (expire_window / 100.0)


def check_drift(hostname: str, local_received: float, timestamp: float) -> None:
    """Log once per host when send and receive times are far apart (clocks out of sync)."""
    try:
        drift = abs(int(local_received) - int(timestamp))
    except (OverflowError, ValueError):  # an infinite or NaN time is no clock reading
        return
    if drift <= HEARTBEAT_DRIFT_MAX or hostname in _drift_warned:
        return
    if len(_drift_warned) >= _DRIFT_MEMORY:
        _drift_warned.clear()
    _drift_warned.add(hostname)
    logger.warning(
        "Substantial drift from %s may mean clocks are out of sync. Current drift is %s "
        "seconds. [orig: %s recv: %s]",
        hostname,
        drift,
        _as_utc(timestamp),
        _as_utc(local_received),
    )


def _as_utc(epoch: float) -> object:
    """``epoch`` as a UTC datetime, or as it is when no datetime can hold it."""
    try:
        return datetime.fromtimestamp(epoch, timezone.utc)
    except (OverflowError, ValueError, OSError):
        return epoch


class Worker(Record):
    """A worker node as seen through its events; equal and hashed by ``hostname``.

    Every field of the worker's events is kept (``pid``, ``freq``, ``active``,
    ``processed``, ``loadavg``, ``sw_ident``, ``sw_ver``, ``sw_sys``, ``clock``,
    ``timestamp``, ``utcoffset``, ``local_received``, ``type`` and any other).
    ``heartbeats`` holds the receive times of the last :attr:`heartbeat_max` events.
    """

    __slots__ = (
        "_hostname",
        "_pid",
        "active",
        "clock",
        "freq",
        "heartbeats",
        "id",
        "loadavg",
        "local_received",
        "processed",
        "sw_ident",
        "sw_sys",
        "sw_ver",
        "timestamp",
        "type",
        "utcoffset",
    )

    active: Any
    clock: Any
    freq: Any
    heartbeats: list[float]
    #: ``'<hostname>.<pid>'``, the worker's origin in the time-ordered task index (kept
    #: up to date when ``hostname`` or ``pid`` change).
    id: str
    loadavg: Any
    local_received: Any
    processed: Any
    sw_ident: Any
    sw_sys: Any
    sw_ver: Any
    timestamp: Any
    type: Any
    utcoffset: Any

    heartbeat_max: ClassVar[int] = 4
    expire_window: ClassVar[float] = HEARTBEAT_EXPIRE_WINDOW

    #: The constructor's fields, as Celery's ``Worker._fields``.
    _fields: ClassVar[tuple[str, ...]] = (
        "hostname",
        "pid",
        "freq",
        "heartbeats",
        "clock",
        "active",
        "processed",
        "loadavg",
        "sw_ident",
        "sw_ver",
        "sw_sys",
    )
    _defaults: ClassVar[Mapping[str, Any]] = {
        "_extra": None,
        "timestamp": None,
        "utcoffset": None,
        "local_received": None,
        "type": None,
    }
    _settable: ClassVar[frozenset[str]] = frozenset(
        {
            "hostname",
            "pid",
            "freq",
            "clock",
            "active",
            "processed",
            "loadavg",
            "sw_ident",
            "sw_ver",
            "sw_sys",
            "timestamp",
            "utcoffset",
            "local_received",
            "type",
        }
    )

    def __init__(
        self,
        hostname: str | None = None,
        pid: int | None = None,
        freq: float = 60,
        heartbeats: list[float] | None = None,
        clock: int | None = 0,
        active: int | None = None,
        processed: int | None = None,
        loadavg: list[float] | None = None,
        sw_ident: str | None = None,
        sw_ver: str | None = None,
        sw_sys: str | None = None,
    ) -> None:
        self._hostname = hostname
        self._pid = pid
        self.id = f"{hostname}.{pid}"
        self.freq = freq
        self.heartbeats = [] if heartbeats is None else heartbeats
        self.clock = clock or 0
        self.active = active
        self.processed = processed
        self.loadavg = loadavg
        self.sw_ident = sw_ident
        self.sw_ver = sw_ver
        self.sw_sys = sw_sys

    @property
    def hostname(self) -> str | None:
        """The node name, e.g. ``w1@host``."""
        return self._hostname

    @hostname.setter
    def hostname(self, value: str | None) -> None:
        self._hostname = value
        self.id = f"{value}.{self._pid}"

    @property
    def pid(self) -> int | None:
        """The process id of the worker's main process (from its worker events)."""
        return self._pid

    @pid.setter
    def pid(self, value: int | None) -> None:
        self._pid = value
        self.id = f"{self._hostname}.{value}"

    def event(
        self,
        type_: str | None,
        timestamp: float | None = None,
        local_received: float | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Apply a worker event: copy ``fields``, then record a heartbeat (or go offline)."""
        if fields:
            self._merge(fields)
        if type_ == "offline":
            self.heartbeats.clear()
        elif local_received and timestamp:
            check_drift(str(self._hostname), local_received, timestamp)
            self.beat(local_received)

    def beat(self, local_received: float) -> None:
        """Record a heartbeat received at ``local_received``: ``heartbeats`` stays sorted
        and keeps the newest :attr:`heartbeat_max`. Every task event of the worker is one."""
        heartbeats = self.heartbeats
        count = len(heartbeats)
        if count >= self.heartbeat_max:
            del heartbeats[0]
        if count and local_received > heartbeats[-1]:
            heartbeats.append(local_received)
        else:
            insort(heartbeats, local_received)

    def update(self, fields: Mapping[str, Any], **kwargs: Any) -> None:
        """Set several fields at once."""
        self._merge(dict(fields, **kwargs) if kwargs else fields)

    @property
    def heartbeat_expires(self) -> float | None:
        """When the worker stops counting as alive; None before any heartbeat."""
        if not self.heartbeats:
            return None
        return heartbeat_expires(self.heartbeats[-1], self.freq, self.expire_window)

    @property
    def alive(self) -> bool:
        """Whether a heartbeat was received within the last ``2 * freq`` seconds."""
        expires = self.heartbeat_expires
        return expires is not None and time.time() < expires

    @property
    def status_string(self) -> str:
        """``'ONLINE'`` or ``'OFFLINE'``."""
        return "ONLINE" if self.alive else "OFFLINE"

    def as_dict(self) -> dict[str, Any]:
        """Every field as a JSON-serialisable dict (extras included)."""
        data: dict[str, Any] = {name: getattr(self, name) for name in self._fields}
        data["heartbeats"] = list(self.heartbeats)
        for name in ("timestamp", "utcoffset", "local_received", "type"):
            data[name] = getattr(self, name)
        if self._extra:
            data["extra"] = dict(self._extra)
        return data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Worker):
            return self._hostname == other._hostname
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._hostname)

    def __repr__(self) -> str:
        return f"<Worker: {self._hostname} ({self.status_string} clock:{self.clock})>"
