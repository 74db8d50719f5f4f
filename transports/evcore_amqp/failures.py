"""Map pika's exceptions (and socket errors) onto :mod:`evcore.errors`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from evcore.errors import ChannelError, ConnectionLost, EvcoreError, TransportError

__all__ = [
    "RESOURCE_LOCKED",
    "channel_level",
    "channel_refusal",
    "inequivalent_arg",
    "reply_code",
    "translate",
    "translated",
]

#: RESOURCE_LOCKED: an exclusive queue held by another connection.
RESOURCE_LOCKED = 405
_REFUSED_CONNECTION_CODES = frozenset({403, 530})  # ACCESS_REFUSED, NOT_ALLOWED (vhost)

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>exchange|queue) '(?P<name>[^']*)'"
    r" in vhost '(?P<vhost>[^']*)': received (?P<received>.+?) but current is (?P<current>.+)$"
)


def inequivalent_arg(reply_text: str) -> dict[str, str] | None:
    """Parse RabbitMQ's PRECONDITION_FAILED text about a re-declaration with other flags.

    >>> inequivalent_arg("PRECONDITION_FAILED - inequivalent arg 'type' for exchange "
    ...                  "'ev' in vhost '/': received 'topic' but current is 'fanout'")["current"]
    'fanout'
    """
    match = _INEQUIVALENT.search(reply_text)
    if match is None:
        return None
    found = match.groupdict()
    for key in ("received", "current"):
        found[key] = found[key].strip().strip("'")
    return found


def reply_code(exc: BaseException | None) -> int | None:
    """The AMQP reply code of a broker's channel or connection close, else None."""
    code = getattr(exc, "reply_code", None)
    return code if isinstance(code, int) else None


def channel_refusal(code: int, text: str, what: str) -> ChannelError:
    """The error for a broker closing a channel with ``code`` and ``text`` during ``what``."""
    mismatch = inequivalent_arg(text) if code == 406 else None
    if mismatch is not None and mismatch["arg"] == "type":
        return ChannelError(
            f"{mismatch['kind']} {mismatch['name']!r} (vhost {mismatch['vhost']!r}) is already "
            f"declared with type {mismatch['current']!r}, cannot redeclare it as "
            f"{mismatch['received']!r}; delete it or use another exchange name "
            f"(broker said: {code} {text})"
        )
    if mismatch is not None:
        return ChannelError(
            f"{mismatch['kind']} {mismatch['name']!r} (vhost {mismatch['vhost']!r}) already "
            f"exists with {mismatch['arg']}={mismatch['current']}, cannot redeclare it with "
            f"{mismatch['arg']}={mismatch['received']} (broker said: {code} {text})"
        )
    return ChannelError(f"broker refused {what}: {code} {text}")


def translate(exc: BaseException, what: str = "the operation") -> TransportError | None:
    """The evcore error for a client failure during ``what``, or None if ``exc`` is not one
    (a bug, to be re-raised as it is)."""
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, EvcoreError):
        return None
    from pika import exceptions as pe  # type: ignore[import-untyped]  # noqa: PLC0415

    if isinstance(exc, pe.ChannelClosedByBroker):
        return channel_refusal(exc.reply_code, exc.reply_text, what)
    if isinstance(exc, pe.ConnectionClosedByBroker):
        if exc.reply_code in _REFUSED_CONNECTION_CODES:
            return ChannelError(f"broker refused {what}: {exc.reply_code} {exc.reply_text}")
        return ConnectionLost(
            f"broker closed the connection during {what}: {exc.reply_code} {exc.reply_text}"
        )
    if isinstance(exc, (pe.ProbableAuthenticationError, pe.AuthenticationError)):
        return ChannelError(f"broker refused the login during {what}: {exc!r}")
    if isinstance(exc, pe.ProbableAccessDeniedError):
        return ChannelError(f"broker refused access to the vhost during {what}: {exc!r}")
    if isinstance(exc, (pe.AMQPError, pe.ChannelError, pe.ReentrancyError, OSError)):
        detail = str(exc) or type(exc).__name__
        return ConnectionLost(f"connection to the broker lost during {what}: {detail}")
    return None


def channel_level(exc: BaseException) -> tuple[bool, bool]:
    """Whether ``exc`` concerns only the channel, and whether the broker closed it with an
    error (the connection stays usable in both cases)."""
    from pika import exceptions as pe  # noqa: PLC0415  (imported lazily)

    return isinstance(exc, pe.AMQPChannelError), isinstance(exc, pe.ChannelClosedByBroker)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Re-raise client and network failures inside the block as evcore errors."""
    try:
        yield
    except Exception as exc:
        error = translate(exc, what)
        if error is None or error is exc:
            raise
        raise error from exc
