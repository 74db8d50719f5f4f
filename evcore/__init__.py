"""evcore: Celery's event system, unbundled, over pluggable transports."""

from evcore.clock import LamportClock
from evcore.dispatcher import Dispatcher, EventDispatcher
from evcore.errors import (
    ChannelError,
    ConfigurationError,
    ConnectionLost,
    DuplicateTransport,
    EvcoreError,
    EventsDisabled,
    InvalidURL,
    MessageRejected,
    MissingDependency,
    TransportError,
    TransportNotFound,
    UnsupportedOperation,
)
from evcore.event import Event, group_from
from evcore.receiver import ConnectionState, EventReceiver, Receiver
from evcore.registry import (
    available_transports,
    connect,
    register_transport,
    unregister_transport,
)
from evcore.state import Camera, Polaroid, State, Task, Worker

__all__ = [
    "Camera",
    "ChannelError",
    "ConfigurationError",
    "ConnectionLost",
    "ConnectionState",
    "Dispatcher",
    "DuplicateTransport",
    "EvcoreError",
    "Event",
    "EventDispatcher",
    "EventReceiver",
    "EventsDisabled",
    "InvalidURL",
    "LamportClock",
    "MessageRejected",
    "MissingDependency",
    "Polaroid",
    "Receiver",
    "State",
    "Task",
    "TransportError",
    "TransportNotFound",
    "UnsupportedOperation",
    "Worker",
    "available_transports",
    "connect",
    "group_from",
    "register_transport",
    "unregister_transport",
]
__version__ = "0.1.0"
