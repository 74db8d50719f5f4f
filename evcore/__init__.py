"""evcore: Celery's event system, unbundled, over pluggable transports."""

from evcore.clock import LamportClock
from evcore.errors import (
    ChannelError,
    ConfigurationError,
    ConnectionLost,
    DuplicateTransport,
    EventsDisabled,
    EvcoreError,
    InvalidURL,
    MessageRejected,
    MissingDependency,
    TransportError,
    TransportNotFound,
    UnsupportedOperation,
)
from evcore.event import Event, group_from
from evcore.registry import available_transports, connect

__all__ = [
    "ChannelError",
    "ConfigurationError",
    "ConnectionLost",
    "DuplicateTransport",
    "Event",
    "EvcoreError",
    "EventsDisabled",
    "InvalidURL",
    "LamportClock",
    "MessageRejected",
    "MissingDependency",
    "TransportError",
    "TransportNotFound",
    "UnsupportedOperation",
    "available_transports",
    "connect",
    "group_from",
]
__version__ = "0.1.0"
