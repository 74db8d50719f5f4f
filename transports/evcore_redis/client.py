"""redis-py, behind a narrow seam: importing it lazily, opening connections, mapping errors.

The transport talks to single :class:`redis.connection.Connection` objects rather than a
pooled client: one for publishing, one per subscription. That keeps pipelined publishing
to one packed write and one read per reply, and lets a subscription's socket be shut
down from another thread to wake a blocked reader.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from types import ModuleType
from typing import Any

from evcore.errors import ChannelError, ConnectionLost, MissingDependency, TransportError
from evcore_redis.settings import RedisSettings

__all__ = ["connection_for", "load_redis", "shutdown_socket", "translate"]

INSTALL_HINT = "pip install 'evcore[redis]'"


def load_redis() -> ModuleType:
    """Import redis-py, or raise MissingDependency with the line that installs it."""
    try:
        import redis  # noqa: PLC0415 - optional dependency, imported on first use
        import redis.connection  # noqa: PLC0415
        import redis.exceptions  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependency(
            f"the Redis transport needs redis-py, which is not installed: {INSTALL_HINT}"
        ) from exc
    return redis


def connection_for(settings: RedisSettings, health_check_interval: float = 0.0) -> Any:
    """A new, not yet connected redis-py connection for ``settings`` (RESP2, no retries).

    RESP2 keeps pub/sub replies plain arrays and works with every Redis from 2.8 on;
    retries are left to evcore's core, which backs off with jitter. With
    ``health_check_interval``, redis-py PINGs before a command sent after that long a silence.
    """
    redis = load_redis()
    common: dict[str, Any] = {
        "db": settings.db,
        "username": settings.username,
        "password": settings.password,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "client_name": settings.client_name,
        "health_check_interval": health_check_interval,
        "protocol": 2,
    }
    if settings.kind == "unix":
        return redis.connection.UnixDomainSocketConnection(path=settings.path, **common)
    common.update(
        host=settings.host, port=settings.port, socket_keepalive=settings.socket_keepalive
    )
    if settings.kind == "tls":
        return redis.connection.SSLConnection(**common, **settings.ssl)
    return redis.connection.Connection(**common)


def translate(exc: BaseException, doing: str, settings: RedisSettings) -> TransportError:
    """Map a redis-py or socket failure onto evcore's errors.

    Authentication and command refusals (``WRONGPASS``, ``NOPERM``, ...) and a server
    certificate that fails verification become :class:`ChannelError`: reconnecting cannot
    cure them. Everything else (refused, reset, timed out, server loading or gone) is a
    :class:`ConnectionLost`, worded for ``doing == "connecting"`` as a broker not reached.
    """
    errors = load_redis().exceptions
    where = settings.address
    refusals = (errors.AuthenticationError, getattr(errors, "AuthorizationError", ()))
    if isinstance(exc, refusals):
        return ChannelError(f"Redis at {where} refused the credentials while {doing}: {exc}")
    if isinstance(exc, errors.ResponseError):
        return ChannelError(f"Redis at {where} refused {doing}: {exc}")
    if _caused_by(exc, ssl.SSLCertVerificationError):
        return ChannelError(
            f"the TLS certificate of Redis at {where} failed verification while {doing}: {exc} "
            "(set ssl_ca_certs to the CA that signed it, or ssl_cert_reqs=none to skip the check)"
        )
    if doing == "connecting":
        return ConnectionLost(f"could not connect to Redis at {where}: {exc}")
    return ConnectionLost(f"lost the connection to Redis at {where} while {doing}: {exc}")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def shutdown_socket(connection: Any) -> None:
    """Shut the connection's socket down without closing it, waking a blocked reader."""
    sock = getattr(connection, "_sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
