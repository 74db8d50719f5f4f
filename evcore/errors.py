"""The exceptions evcore raises, and the ones adapters map their client's failures onto."""

from __future__ import annotations


class EvcoreError(Exception):
    """Base class of every error evcore raises on purpose."""


class ConfigurationError(EvcoreError, ValueError):
    """Options that cannot work together, or a value out of range."""


class TransportError(EvcoreError):
    """A failure in a transport: the base of what adapters raise."""


class ConnectionLost(TransportError):
    """The broker is unreachable or the connection dropped.

    The core treats it as temporary: a Dispatcher buffers, a Receiver reconnects.
    """


class ChannelError(TransportError):
    """The broker refused an operation (a declaration with other flags, a missing exchange, ...).

    Not retried: it names a configuration problem that reconnecting will not fix.
    """


class UnsupportedOperation(TransportError):
    """The transport cannot do what was asked (an exchange type, a queue option, broadcast)."""


class TransportNotFound(EvcoreError, LookupError):
    """No installed transport handles the URL's scheme."""


class DuplicateTransport(EvcoreError, LookupError):
    """Two installed distributions register the same URL scheme."""


class MissingDependency(EvcoreError, ImportError):
    """A transport's client library is not installed; the message says what to install."""


class InvalidURL(EvcoreError, ValueError):
    """A transport URL that cannot be parsed or lacks a part the transport needs."""


class EventsDisabled(EvcoreError):
    """Events cannot flow over this transport (for example driver type ``sql``)."""


class MessageRejected(EvcoreError):
    """A received message that was refused; ``reason`` says why in a few words."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
