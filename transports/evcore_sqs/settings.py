"""Settings of the SQS transport: its URL and options, and the names of topics and queues.

Pure: no boto3 here, so it is unit-tested without AWS.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from evcore.errors import InvalidURL

__all__ = ["SqsSettings", "parse_settings", "queue_name", "topic_name"]

#: What SNS topic and SQS queue names may hold.
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
#: SQS queue names are at most 80 characters, SNS topic names 256 (".fifo" included).
_MAX_QUEUE = 80
_MAX_TOPIC = 256
_FIFO = ".fifo"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise InvalidURL(f"option {name}={value!r} is not a boolean (use true/false)")


def _whole(low: int, high: int) -> Callable[[str, Any], int]:
    def parse(name: str, value: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = low - 1
        if not low <= number <= high:
            raise InvalidURL(f"option {name}={value!r} must be a whole number from {low} to {high}")
        return number

    return parse


def _seconds(name: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if seconds <= 0:
        raise InvalidURL(f"option {name}={value!r} must be a positive number of seconds")
    return seconds


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidURL(f"option {name}={value!r} must be a string")
    return value


def _prefix(name: str, value: Any) -> str:
    text = _text(name, value)
    if _UNSAFE.search(text) or len(text) > 40:
        raise InvalidURL(
            f"option {name}={value!r} may hold only letters, digits, '-' and '_' (40 at most)"
        )
    return text


def _endpoint(name: str, value: Any) -> str:
    text = _text(name, value)
    if urlsplit(text).scheme not in {"http", "https"} or not urlsplit(text).hostname:
        raise InvalidURL(f"option {name}={value!r} must be an http:// or https:// URL")
    return text


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "region": _text,
    "endpoint_url": _endpoint,
    "sns_endpoint_url": _endpoint,
    "sqs_endpoint_url": _endpoint,
    "topic_prefix": _prefix,
    "queue_prefix": _prefix,
    "fifo": _boolean,
    "message_retention": _whole(60, 1_209_600),
    "visibility_timeout": _whole(0, 43_200),
    "wait_time_seconds": _whole(0, 20),
    "connect_timeout": _seconds,
    "read_timeout": _seconds,
    "alive_interval": _seconds,
}


@dataclass(frozen=True, slots=True)
class SqsSettings:
    """Where to reach SNS and SQS, and how topics and queues are made."""

    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    sns_endpoint_url: str | None = None
    sqs_endpoint_url: str | None = None
    topic_prefix: str = "evcore-"
    queue_prefix: str = "evcore-"
    #: FIFO topic and queues: each publisher's order kept, duplicates removed by SNS.
    fifo: bool = True
    #: Seconds SQS keeps an unread message (60 at least).
    message_retention: int = 60
    #: Seconds a received message stays hidden before SQS would hand it out again.
    visibility_timeout: int = 30
    #: Longest wait of one ReceiveMessage call (long polling); also how long a blocked
    #: ``receive()`` may take to notice ``close()`` from another thread.
    wait_time_seconds: int = 1
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    #: Seconds between the tags a live subscription puts on its queue (see ``sweep``).
    alive_interval: float = 300.0

    @property
    def address(self) -> str:
        """Where the transport talks to, for messages."""
        region = self.region or "(default region)"
        return self.endpoint_url or self.sqs_endpoint_url or f"AWS {region}"


def _safe(text: str, room: int) -> str:
    """``text`` fit for an AWS name in ``room`` characters; a digest of the original keeps
    names that had to change (or be cut) apart."""
    cleaned = _UNSAFE.sub("_", text)
    if cleaned == text and 0 < len(text) <= room:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{cleaned[: max(room - 17, 0)]}-{digest}".lstrip("-")


def topic_name(settings: SqsSettings, exchange: str) -> str:
    """The SNS topic of ``exchange``."""
    suffix = _FIFO if settings.fifo else ""
    room = _MAX_TOPIC - len(settings.topic_prefix) - len(suffix)
    return f"{settings.topic_prefix}{_safe(exchange, room)}{suffix}"


def queue_name(settings: SqsSettings, queue: str, unique: str = "") -> str:
    """The SQS queue of a subscription to ``queue``. ``unique`` (random) gives another name
    when the plain one cannot be used: SQS refuses a queue's name for 60 s after deleting it."""
    suffix = _FIFO if settings.fifo else ""
    extra = f"-{unique}" if unique else ""
    room = _MAX_QUEUE - len(settings.queue_prefix) - len(suffix) - len(extra)
    return f"{settings.queue_prefix}{_safe(queue, room)}{extra}{suffix}"


def parse_settings(url: str, **options: Any) -> SqsSettings:
    """Build settings from ``sqs://[key:secret@][?option=value...]``; keyword ``options``
    override the query string. Raises InvalidURL naming the offending part."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"cannot parse SQS URL {url!r}: {exc}") from None
    if parts.scheme.lower() != "sqs":
        raise InvalidURL(f"not an SQS URL: {url!r} (expected sqs://)")
    if parts.hostname or port is not None or parts.path not in {"", "/"}:
        raise InvalidURL(
            f"an SQS URL names no host: {url!r} (use region=... and, for another endpoint, "
            "endpoint_url=http://host:port)"
        )
    raw: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    raw.update(options)
    unknown = sorted(set(raw) - set(_PARSERS))
    if unknown:
        raise InvalidURL(
            f"unknown SQS option(s) {', '.join(unknown)} in {url!r}; "
            f"known: {', '.join(sorted(_PARSERS))}"
        )
    values = {name: _PARSERS[name](name, value) for name, value in raw.items()}
    if parts.username:
        values["access_key"] = unquote(parts.username)
        values["secret_key"] = unquote(parts.password or "")
    return SqsSettings(**values)
