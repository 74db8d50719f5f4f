"""Parse ``amqp://``, ``amqps://`` and ``pyamqp://`` URLs and options; build queue arguments.

Nothing here imports pika: a URL can be checked without the client library installed.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from evcore.codec import DEFAULT_MAX_MESSAGE_BYTES
from evcore.errors import ConfigurationError, InvalidURL
from evcore.transport import QueueOptions

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AMQPOptions",
    "Endpoint",
    "TLSSettings",
    "parse_url",
    "queue_arguments",
]

SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One broker address."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """How to set up TLS, in kombu's ``ssl`` dict terms; or a ready ``ssl.SSLContext``."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    server_hostname: str | None = None
    context: ssl.SSLContext | None = None

    def build_context(self) -> ssl.SSLContext:
        """The SSL context these settings describe."""
        if self.context is not None:
            return self.context
        context = ssl.create_default_context(cafile=self.ca_certs)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        if self.cert_reqs != ssl.CERT_REQUIRED:
            context.check_hostname = False
            context.verify_mode = self.cert_reqs
        return context


@dataclass(frozen=True, slots=True)
class AMQPOptions:
    """Everything the transport needs to connect, publish and consume."""

    endpoints: tuple[Endpoint, ...]
    username: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    tls: TLSSettings | None = None
    #: Heartbeat of consuming connections in seconds; None takes the broker's proposal.
    heartbeat: int | None = None
    connection_attempts: int = 1
    retry_delay: float = 1.0
    socket_timeout: float = 10.0
    #: How long a publish may stay blocked by a broker resource alarm before it fails.
    blocked_connection_timeout: float | None = 30.0
    confirm_publish: bool = False
    confirm_timeout: float = 30.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: ``basic.qos`` prefetch for consumers; 0 sends none (RabbitMQ ignores it with no_ack).
    prefetch_count: int = 0
    connection_name: str = field(default_factory=lambda: f"evcore-{uuid.uuid4().hex[:12]}")
    #: Ask for the fast path (see :mod:`evcore_amqp.fastpath`): honoured only on the pika
    #: versions it was tested against.
    fast_path: bool = False


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise InvalidURL(f"option {name!r} must be a boolean (true/false), got {value!r}")


def _as_number(kind: Callable[[Any], Any], minimum: float) -> Callable[[str, Any], Any]:
    def convert(name: str, value: Any) -> Any:
        if isinstance(value, bool):
            raise InvalidURL(f"option {name!r} must be a number, got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise InvalidURL(f"option {name!r} must be a number, got {value!r}") from None
        if number < minimum:
            raise InvalidURL(f"option {name!r} must be >= {minimum}, got {value!r}")
        return number

    return convert


def _as_optional(convert: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def optional(name: str, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.lower() in {"", "none"}):
            return None
        return convert(name, value)

    return optional


def _as_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidURL(f"option {name!r} must be a non-empty string, got {value!r}")
    return value


def _as_cert_reqs(name: str, value: Any) -> ssl.VerifyMode:
    if isinstance(value, ssl.VerifyMode):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return ssl.VerifyMode(value)
    reqs = _CERT_REQS.get(str(value).strip().lower())
    if reqs is None:
        raise InvalidURL(
            f"option {name!r} must be one of CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED, "
            f"got {value!r}"
        )
    return reqs


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "heartbeat": _as_optional(_as_number(int, 0)),
    "connection_attempts": _as_number(int, 1),
    "retry_delay": _as_number(float, 0),
    "socket_timeout": _as_number(float, 0.001),
    "blocked_connection_timeout": _as_optional(_as_number(float, 0.001)),
    "confirm_publish": _as_bool,
    "confirm_timeout": _as_number(float, 0.001),
    "max_message_bytes": _as_number(int, 1),
    "prefetch_count": _as_number(int, 0),
    "connection_name": _as_text,
    "fast_path": _as_bool,
}
_TLS_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "ssl_ca_certs": _as_text,
    "ssl_certfile": _as_text,
    "ssl_keyfile": _as_text,
    "ssl_cert_reqs": _as_cert_reqs,
    "ssl_server_hostname": _as_text,
}
KNOWN_OPTIONS = frozenset(_CONVERTERS) | frozenset(_TLS_CONVERTERS) | {"ssl"}


def _tls_from_ssl_option(value: Any) -> TLSSettings | None:
    """Read the ``ssl`` option: a boolean, an ``ssl.SSLContext`` or kombu's dict."""
    if isinstance(value, ssl.SSLContext):
        return TLSSettings(context=value)
    if isinstance(value, Mapping):
        unknown = set(value) - {"ca_certs", "certfile", "keyfile", "cert_reqs", "server_hostname"}
        if unknown:
            raise InvalidURL(f"unknown keys in the 'ssl' option: {sorted(unknown)}")
        return TLSSettings(
            **{
                key: _TLS_CONVERTERS[f"ssl_{key}"](f"ssl.{key}", item)
                for key, item in value.items()
                if item is not None
            }
        )
    return TLSSettings() if _as_bool("ssl", value) else None


def _endpoint(scheme: str, netloc_url: str, url: str) -> tuple[Endpoint, Any]:
    try:
        parts = urlsplit(netloc_url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"cannot parse AMQP URL {url!r}: {exc}") from None
    default_port = DEFAULT_TLS_PORT if scheme == "amqps" else DEFAULT_PORT
    host = parts.hostname or "localhost"
    return Endpoint(host, port or default_port), parts


def _vhost(path: str) -> str:
    """kombu's rule: no path or ``/`` is vhost ``/``, otherwise the rest, unquoted
    (``//`` and ``/%2F`` are both ``/``)."""
    if path in ("", "/"):
        return "/"
    return unquote(path[1:])


def parse_url(url: str, overrides: Mapping[str, Any] | None = None) -> AMQPOptions:
    """Parse an AMQP URL and its options; keyword ``overrides`` win over the query string.

    Several brokers may be given separated by ``;`` (kombu's failover form); they are tried
    in order and must share credentials, vhost and options.

    >>> options = parse_url("amqp://guest:guest@127.0.0.1:5672//?heartbeat=10")
    >>> options.vhost, options.endpoints[0].port, options.heartbeat
    ('/', 5672, 10)
    """
    if not isinstance(url, str):
        raise InvalidURL(f"not an AMQP URL: {url!r}")
    urls = [part.strip() for part in url.split(";") if part.strip()]
    if not urls:
        raise InvalidURL(f"not an AMQP URL: {url!r}")
    endpoints = []
    first_scheme = ""
    parts: Any = None
    for index, one in enumerate(urls):
        scheme = one.partition("://")[0].lower() if "://" in one else ""
        if scheme not in SCHEMES:
            raise InvalidURL(
                f"not an AMQP URL: {one!r} (expected amqp://, amqps:// or pyamqp://)"
            )
        endpoint, split = _endpoint(scheme, one, url)
        endpoints.append(endpoint)
        if index == 0:
            first_scheme, parts = scheme, split
    raw: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    raw.update(overrides or {})
    unknown = set(raw) - KNOWN_OPTIONS
    if unknown:
        raise InvalidURL(
            f"unknown AMQP option(s) {sorted(unknown)}; known options: {sorted(KNOWN_OPTIONS)}"
        )
    values = {name: _CONVERTERS[name](name, raw[name]) for name in _CONVERTERS if name in raw}
    tls = _tls_from_ssl_option(raw["ssl"]) if "ssl" in raw else None
    flat_tls = {name: _TLS_CONVERTERS[name](name, raw[name])
                for name in _TLS_CONVERTERS if name in raw}
    if flat_tls:
        if tls is not None and tls.context is not None:
            raise InvalidURL("give either an ssl.SSLContext or ssl_* options, not both")
        flat = {key.removeprefix("ssl_"): item for key, item in flat_tls.items()}
        tls = replace(tls or TLSSettings(), **flat)
    if first_scheme == "amqps" and tls is None:
        if "ssl" in raw:
            raise InvalidURL("amqps:// always uses TLS; drop ssl=false or use amqp://")
        tls = TLSSettings()
    return AMQPOptions(
        endpoints=tuple(endpoints),
        username=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        vhost=_vhost(parts.path),
        tls=tls,
        **values,
    )


def _milliseconds(seconds: float) -> int:
    return int(seconds * 1000)


def queue_arguments(queue: QueueOptions) -> dict[str, Any]:
    """The ``x-`` arguments RabbitMQ gets for ``queue``, as Celery/kombu send them.

    ``x-message-ttl`` and ``x-expires`` in int milliseconds; ``max_length`` adds
    ``x-max-length`` with ``x-overflow=drop-head`` (the oldest events go first).

    >>> queue_arguments(QueueOptions("celeryev.x"))
    {'x-message-ttl': 5000, 'x-expires': 60000}
    """
    arguments: dict[str, Any] = {}
    if queue.message_ttl is not None:
        if queue.message_ttl < 0:
            raise ConfigurationError(f"queue message_ttl must be >= 0, got {queue.message_ttl}")
        arguments["x-message-ttl"] = _milliseconds(queue.message_ttl)
    if queue.expires is not None:
        if _milliseconds(queue.expires) < 1:
            raise ConfigurationError(
                f"queue expires must be at least 0.001 s (RabbitMQ refuses 0), got {queue.expires}"
            )
        arguments["x-expires"] = _milliseconds(queue.expires)
    if queue.max_length is not None:
        if queue.max_length < 0:
            raise ConfigurationError(f"queue max_length must be >= 0, got {queue.max_length}")
        arguments["x-max-length"] = queue.max_length
        arguments["x-overflow"] = "drop-head"
    return arguments
