"""Connection settings of the Redis transport: parsing URLs and options, naming channels.

Everything here is pure (no socket, no redis-py), so it is unit-tested without a broker.
The channel layout is kombu's: ``<global_keyprefix><fanout prefix><exchange>/<routing key>``
with the fanout prefix ``/{db}.`` by default.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from evcore.errors import InvalidURL

__all__ = ["RedisSettings", "binding_glob", "glob_escape", "parse_settings"]

DEFAULT_PORT = 6379
DEFAULT_FANOUT_PREFIX = "/{db}."
SCHEMES = {"redis": "tcp", "rediss": "tls", "redis+socket": "unix"}

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}
_CERT_REQS = {
    "none": "none",
    "cert_none": "none",
    "optional": "optional",
    "cert_optional": "optional",
    "required": "required",
    "cert_required": "required",
}
_GLOB_SPECIALS = frozenset("*?[]\\")


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidURL(f"option {name}={value!r} is not a boolean (use true/false)")


def _seconds(name: str, value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none"}):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InvalidURL(f"option {name}={value!r} is not a number of seconds") from None
    if seconds < 0:
        raise InvalidURL(f"option {name}={value!r} must not be negative")
    return seconds


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidURL(f"option {name}={value!r} must be a string")
    return value


def _optional_text(name: str, value: Any) -> str | None:
    return None if value is None or value == "" else _text(name, value)


def _database(name: str, value: Any) -> int:
    text = str(value).strip().lstrip("/") if isinstance(value, str) else value
    if text == "":
        return 0
    try:
        db = int(text)
    except (TypeError, ValueError):
        raise InvalidURL(f"{name} {value!r} is not a database number (an integer from 0)") from None
    if db < 0:
        raise InvalidURL(f"{name} {value!r} is not a database number (an integer from 0)")
    return db


def _cert_reqs(name: str, value: Any) -> str:
    if isinstance(value, ssl.VerifyMode):
        value = value.name
    choice = _CERT_REQS.get(str(value).strip().lower())
    if choice is None:
        raise InvalidURL(
            f"option {name}={value!r} must be one of none, optional, required "
            "(or CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED)"
        )
    return choice


def _fanout_prefix(name: str, value: Any) -> str | bool:
    if isinstance(value, bool):
        return value
    text = _text(name, value)
    lowered = text.strip().lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    if not (text.startswith("/") and text.endswith(".")):
        raise InvalidURL(
            f"option {name}={value!r}: a custom fanout prefix must start with '/' and end "
            "with '.' (e.g. '/{db}.'), as kombu's receivers expect; use false for no prefix"
        )
    return text


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise InvalidURL(f"option {name}={value!r} must be a whole number from 1")
    return number


def _port(value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if not 0 < port < 65536:
        raise InvalidURL(f"port {value!r} is not a TCP port number")
    return port


_SSL_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ca_certs": _optional_text,
    "ssl_ca_path": _optional_text,
    "ssl_certfile": _optional_text,
    "ssl_keyfile": _optional_text,
    "ssl_password": _optional_text,
    "ssl_check_hostname": _boolean,
}

_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "db": _database,
    "username": _optional_text,
    "password": _optional_text,
    "socket_timeout": _seconds,
    "socket_connect_timeout": _seconds,
    "socket_keepalive": _boolean,
    "health_check_interval": _seconds,
    "client_name": _optional_text,
    "global_keyprefix": _text,
    "fanout_prefix": _fanout_prefix,
    "fanout_patterns": _boolean,
    "max_drain": _positive_int,
    **_SSL_PARSERS,
}
_KNOWN = frozenset({"host", "port", "path", "ssl", "virtual_host", *_PARSERS})


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where and how to connect, and how channels are named; built by :func:`parse_settings`."""

    kind: str = "tcp"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    path: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    socket_timeout: float | None = 5.0
    socket_connect_timeout: float | None = 5.0
    socket_keepalive: bool = True
    #: Seconds of silence after which a connection is checked with PING (0 disables).
    health_check_interval: float = 25.0
    client_name: str | None = None
    global_keyprefix: str = ""
    #: The fanout prefix with ``{db}`` already filled in (``""`` when it is off).
    fanout_prefix: str = "/0."
    fanout_patterns: bool = True
    #: The most messages one ``receive()`` call hands back.
    max_drain: int = 10_000
    ssl: Mapping[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """The server, for messages: ``host:port`` or the socket path, and the db."""
        where = self.path if self.kind == "unix" else f"{self.host}:{self.port}"
        return f"{where}/{self.db}"

    def channel_prefix(self, exchange: str) -> str:
        """The channel of ``exchange`` without a routing key: ``/{db}.<exchange>``."""
        return f"{self.global_keyprefix}{self.fanout_prefix}{exchange}"

    def publish_channel(self, exchange: str, routing_key: str) -> str:
        """The channel a message with ``routing_key`` is published on."""
        prefix = self.channel_prefix(exchange)
        if routing_key and self.fanout_patterns:
            return f"{prefix}/{routing_key}"
        return prefix

    def subscribe_patterns(self, exchange: str, binding_key: str) -> list[str]:
        """The PSUBSCRIBE patterns for ``binding_key``: exactly kombu's.

        The default binding ``#`` gives ``/{db}.<exchange>/*``. Redis ACLs compare
        subscribed patterns literally, so using kombu's patterns keeps working wherever a
        Celery monitor is allowed to subscribe.
        """
        prefix = glob_escape(self.channel_prefix(exchange))
        if not self.fanout_patterns:
            return [prefix]
        return [f"{prefix}/{binding_glob(binding_key)}"]


def glob_escape(text: str) -> str:
    """Escape the characters Redis glob patterns treat specially."""
    if not any(char in _GLOB_SPECIALS for char in text):
        return text
    return "".join(f"\\{char}" if char in _GLOB_SPECIALS else char for char in text)


def binding_glob(binding_key: str) -> str:
    """kombu's glob for an AMQP binding key: ``#`` becomes ``*``, ``*`` stays ``*``.

    A Redis ``*`` matches any text, dots included, so the glob lets through every routing
    key the binding matches in which each ``#`` stands for at least one word (and more,
    which the core filters out). Like kombu, it misses a ``#`` standing for no word at all
    (``worker.#`` does not get ``worker``) and the empty routing key.
    """
    return "".join(
        "*" if char in "#*" else f"\\{char}" if char in _GLOB_SPECIALS else char
        for char in binding_key
    )


def _split_url(url: str) -> tuple[str, dict[str, Any]]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"cannot parse Redis URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    kind = SCHEMES.get(scheme)
    if kind is None:
        raise InvalidURL(
            f"not a Redis URL: {url!r} (expected redis://, rediss:// or redis+socket://)"
        )
    found: dict[str, Any] = {}
    if parts.username:
        found["username"] = unquote(parts.username)
    if parts.password:
        found["password"] = unquote(parts.password)
    if kind == "unix":
        path = unquote(parts.path)
        if parts.hostname or not path.startswith("/") or path == "/":
            raise InvalidURL(
                f"a redis+socket URL names an absolute socket path, e.g. "
                f"redis+socket:///run/redis/redis.sock?db=0; got {url!r}"
            )
        found["path"] = path
    else:
        found["host"] = parts.hostname or "127.0.0.1"
        if port is not None:
            found["port"] = port
        if parts.path not in {"", "/"}:
            found["db"] = _database("database in the URL path", parts.path)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in found and name in {"db", "username", "password"}:
            raise InvalidURL(f"{name} is given twice in {url!r}")
        found[name] = value
    return kind, found


def parse_settings(url: str, **options: Any) -> RedisSettings:
    """Build settings from ``url``; keyword ``options`` override its query string.

    Raises :class:`~evcore.errors.InvalidURL` naming the offending part.
    """
    kind, raw = _split_url(url)
    raw.update(options)
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise InvalidURL(
            f"unknown Redis option(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}"
        )
    if "virtual_host" in raw:
        if "db" in raw:
            raise InvalidURL("give the database as db or as virtual_host, not both")
        raw["db"] = raw.pop("virtual_host")
    values: dict[str, Any] = {
        name: _PARSERS[name](name, value) for name, value in raw.items() if name in _PARSERS
    }
    for name in ("host", "path"):
        if name in raw:
            values[name] = _text(name, raw[name])
    if "port" in raw:
        values["port"] = _port(raw["port"])

    tls = {name: values.pop(name) for name in list(values) if name in _SSL_PARSERS}
    ssl_option = raw.get("ssl")
    if isinstance(ssl_option, Mapping):
        for name, value in ssl_option.items():
            if name not in _SSL_PARSERS:
                raise InvalidURL(f"unknown TLS option {name!r}; known: {sorted(_SSL_PARSERS)}")
            tls.setdefault(name, _SSL_PARSERS[name](name, value))
        ssl_option = True
    if ssl_option is not None and _boolean("ssl", ssl_option):
        if kind == "unix":
            raise InvalidURL("TLS does not apply to redis+socket:// (a Unix socket)")
        kind = "tls"
    if kind != "tls" and tls:
        raise InvalidURL(f"TLS options ({', '.join(sorted(tls))}) need a rediss:// URL or ssl=true")
    if kind == "tls":
        tls.setdefault("ssl_cert_reqs", "required")
        if tls["ssl_cert_reqs"] == "none":
            tls.setdefault("ssl_check_hostname", False)

    prefix = values.pop("fanout_prefix", True)
    if prefix is True:
        prefix = DEFAULT_FANOUT_PREFIX
    elif prefix is False:
        prefix = ""
    db = values.get("db", 0)
    if values.get("health_check_interval", 0) is None:
        values["health_check_interval"] = 0.0
    return RedisSettings(
        kind=kind, fanout_prefix=prefix.replace("{db}", str(db)), ssl=tls, **values
    )
