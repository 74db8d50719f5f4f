"""Settings of the PostgreSQL LISTEN/NOTIFY transport: its URL and options.

The URL is a libpq URL with ``+notify`` after the scheme
(``postgresql+notify://user@host:5432/db?sslmode=require``): everything libpq understands
passes through to it, and evcore's own options are taken out of the query string first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from evcore.errors import InvalidURL

__all__ = ["SCHEMES", "NotifySettings", "parse_settings"]

SCHEMES = frozenset({"postgresql+notify", "postgres+notify"})

#: libpq parameters evcore sets unless the URL does: a bounded connect, keepalives so a
#: silent peer is noticed, UTF-8 on the wire, and a name to find the connections by.
_LIBPQ_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "application_name": "evcore",
}


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """Where to connect (``conninfo``, a libpq URL) and evcore's own options."""

    conninfo: str = field(repr=False)
    #: Host, port and database, for messages (never the password).
    address: str = "127.0.0.1:5432/postgres"
    #: The most notifications one ``receive()`` hands back.
    max_drain: int = 10_000
    libpq: Mapping[str, str] = field(default_factory=dict, repr=False)


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise InvalidURL(f"option {name}={value!r} must be a whole number from 1")
    return number


def parse_settings(url: str, **options: Any) -> NotifySettings:
    """Split ``url`` into a libpq URL and evcore's options; raise InvalidURL.

    Keyword ``options`` override the query string; those evcore does not know go to libpq
    (``application_name``, ``sslmode``, ...), which checks them when it connects.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"cannot parse PostgreSQL URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidURL(
            f"not a PostgreSQL LISTEN/NOTIFY URL: {url!r} (expected postgresql+notify://)"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update({name: str(value) for name, value in options.items()})
    max_drain = _positive_int("max_drain", query.pop("max_drain", 10_000))
    libpq = {**_LIBPQ_DEFAULTS, **query}
    if "\x00" in url or any("\x00" in f"{k}{v}" for k, v in libpq.items()):
        raise InvalidURL("a PostgreSQL URL cannot contain a NUL character")
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(libpq), ""))
    host = parts.hostname or "localhost"
    database = parts.path.lstrip("/") or parts.username or "postgres"
    address = f"{host}:{port or 5432}/{database}"
    return NotifySettings(conninfo=conninfo, address=address, max_drain=max_drain, libpq=libpq)
