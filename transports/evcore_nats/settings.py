"""Connection settings of the NATS transports: parsing URLs and options.

Pure (no socket, no nats-py), so it is unit-tested without a server. One URL form serves
both adapters: ``nats://[user:password@]host[:port][?option=value&...]`` for core pub/sub
and ``jetstream://...`` (same options, plus the stream's) for JetStream.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from evcore.errors import InvalidURL

__all__ = ["JETSTREAM_OPTIONS", "NatsSettings", "parse_settings"]

DEFAULT_PORT = 4222
_WORD = re.compile(r"[A-Za-z0-9_-]+")


def _seconds(name: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InvalidURL(f"option {name}={value!r} is not a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidURL(f"option {name}={value!r} must be a positive number of seconds")
    return seconds


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise InvalidURL(f"option {name}={value!r} must be a whole number from 1")
    return number


def _count(name: str, value: Any) -> int:
    """A whole number from 0 (0 meaning no limit)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise InvalidURL(f"option {name}={value!r} must be a whole number from 0 (0: no limit)")
    return number


def _text(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidURL(f"option {name}={value!r} must be a string")
    return value


def _subject_prefix(name: str, value: Any) -> str:
    text = _text(name, value) or ""
    for token in text.split(".") if text else ():
        if not _WORD.fullmatch(token):
            raise InvalidURL(
                f"option {name}={value!r}: a subject prefix is dot-separated words of letters, "
                "digits, '-' and '_' (no wildcards, no empty words)"
            )
    return text


def _limit_seconds(name: str, value: Any) -> float:
    """Seconds from 0 (0 meaning no limit)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise InvalidURL(f"option {name}={value!r} must be a number of seconds from 0 (0: none)")
    return seconds


def _stream_prefix(name: str, value: Any) -> str:
    text = _text(name, value) or ""
    if not _WORD.fullmatch(text) or len(text) > 32:
        raise InvalidURL(
            f"option {name}={value!r}: a stream name prefix is 1 to 32 letters, digits, '-' "
            "and '_'"
        )
    return text


def _storage(name: str, value: Any) -> str:
    text = str(value).strip().lower()
    if text not in {"file", "memory"}:
        raise InvalidURL(f"option {name}={value!r} must be file or memory")
    return text


#: Options of the JetStream adapter only (see ``docs/transports/nats.md``).
JETSTREAM_OPTIONS: dict[str, Callable[[str, Any], Any]] = {
    "partitions": _positive_int,
    "stream_prefix": _stream_prefix,
    "max_msgs": _count,
    "max_bytes": _count,
    "max_age": _limit_seconds,
    "storage": _storage,
    "replicas": _positive_int,
    "max_ack_pending": _positive_int,
    "batch": _positive_int,
}


#: Option parsers shared by both adapters; the JetStream adapter adds its own.
COMMON_OPTIONS: dict[str, Callable[[str, Any], Any]] = {
    "name": _text,
    "user": _text,
    "password": _text,
    "token": _text,
    "connect_timeout": _seconds,
    "ping_interval": _seconds,
    "max_outstanding_pings": _positive_int,
    "flush_timeout": _seconds,
    "subject_prefix": _subject_prefix,
    "max_buffered": _positive_int,
    "max_buffered_bytes": _positive_int,
}


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """Where and how to connect, and how subjects are named; built by :func:`parse_settings`."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    #: The connection name the server shows in its monitoring.
    name: str | None = None
    connect_timeout: float = 2.0
    #: Seconds between the client's PINGs; a connection is given up after
    #: ``max_outstanding_pings`` unanswered ones.
    ping_interval: float = 10.0
    max_outstanding_pings: int = 2
    #: How long a publish waits for the server to confirm it has the batch (PING/PONG).
    flush_timeout: float = 5.0
    #: Words put before every subject (``evcore`` gives ``evcore.<exchange>.<routing key>``).
    subject_prefix: str = ""
    #: The most messages (and bytes) a subscription holds for a slow reader; beyond them
    #: new messages are dropped and counted.
    max_buffered: int = 100_000
    max_buffered_bytes: int = 64 * 1024 * 1024
    #: Options only one adapter knows (JetStream's stream settings), already validated.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """``host:port``, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def server_url(self) -> str:
        """The server URL handed to nats-py (credentials are passed apart)."""
        return f"nats://{self.address}"


def parse_settings(
    url: str,
    schemes: frozenset[str] = frozenset({"nats"}),
    extra_options: Mapping[str, Callable[[str, Any], Any]] | None = None,
    **options: Any,
) -> NatsSettings:
    """Build settings from ``url``; keyword ``options`` override its query string.

    Raises :class:`~evcore.errors.InvalidURL` for anything unusable: another scheme, a bad
    port, a path, an unknown or malformed option.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
        hostname = parts.hostname
    except ValueError as exc:
        raise InvalidURL(f"cannot parse NATS URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        wanted = " or ".join(f"{name}://" for name in sorted(schemes))
        raise InvalidURL(f"not a NATS URL: {url!r} (expected {wanted})")
    if parts.path not in {"", "/"} or parts.fragment:
        raise InvalidURL(f"a NATS URL names a server only, without a path: got {url!r}")
    parsers = {**COMMON_OPTIONS, **(extra_options or {})}
    found: dict[str, Any] = {}
    if parts.username and parts.password is None:
        found["token"] = unquote(parts.username)
    elif parts.username:
        found["user"] = unquote(parts.username)
    if parts.password is not None:
        found["password"] = unquote(parts.password)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in found:
            raise InvalidURL(f"option {name} is given twice in {url!r}")
        found[name] = value
    found.update(options)
    unknown = sorted(set(found) - set(parsers))
    if unknown:
        raise InvalidURL(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {url!r}; "
            f"known: {', '.join(sorted(parsers))}"
        )
    values = {name: parsers[name](name, value) for name, value in found.items()}
    extra = {name: values.pop(name) for name in list(values) if name not in COMMON_OPTIONS}
    values = {name: value for name, value in values.items() if value is not None}
    if port is not None and not 0 < port < 65536:
        raise InvalidURL(f"port {port!r} is not a TCP port number")
    return NatsSettings(
        host=hostname or "127.0.0.1", port=port or DEFAULT_PORT, extra=extra, **values
    )
