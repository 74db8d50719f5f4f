"""psycopg 3 behind a narrow seam: importing it lazily, connecting, mapping its errors."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from evcore.errors import (
    ChannelError,
    ConnectionLost,
    InvalidURL,
    MissingDependency,
    TransportError,
)
from evcore_pgnotify.settings import NotifySettings

__all__ = ["connect", "load_psycopg", "translate", "validate"]

INSTALL_HINT = "pip install 'evcore[postgres]'"

#: SQLSTATE classes that reconnecting cannot cure: bad credentials (28), a database that
#: does not exist (3D), insufficient privilege (42501).
_REFUSALS = ("28", "3D", "42501")


def load_psycopg() -> ModuleType:
    """Import psycopg 3, or raise MissingDependency with the line that installs it."""
    try:
        import psycopg  # noqa: PLC0415 - optional dependency, imported on first use
        import psycopg.conninfo  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependency(
            f"the PostgreSQL LISTEN/NOTIFY transport needs psycopg 3, which is not installed: "
            f"{INSTALL_HINT}"
        ) from exc
    return psycopg


def validate(settings: NotifySettings) -> None:
    """Have libpq parse the connection string (no I/O); InvalidURL names what it refused."""
    psycopg = load_psycopg()
    try:
        psycopg.conninfo.conninfo_to_dict(settings.conninfo)
    except psycopg.Error as exc:
        raise InvalidURL(f"libpq refused the PostgreSQL URL: {exc}") from None


def connect(settings: NotifySettings) -> Any:
    """A new autocommit connection; ConnectionLost or ChannelError when it fails."""
    psycopg = load_psycopg()
    try:
        return psycopg.Connection.connect(settings.conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise translate(exc, "connecting", settings) from exc


def translate(exc: BaseException, doing: str, settings: NotifySettings) -> TransportError:
    """Map a psycopg or socket failure onto evcore's errors.

    Refused credentials, a missing database or a missing privilege are a ChannelError;
    other server errors (a payload it will not take) too. A connection that failed or was
    terminated (``pg_terminate_backend``, a restart) is ConnectionLost.
    """
    psycopg = load_psycopg()
    where = settings.address
    sqlstate = getattr(exc, "sqlstate", None) or ""
    text = str(exc).strip()
    if sqlstate.startswith(_REFUSALS) or "authentication failed" in text:
        return ChannelError(f"PostgreSQL at {where} refused {doing}: {text}")
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, OSError)):
        return ConnectionLost(f"lost the connection to PostgreSQL at {where} while {doing}: {text}")
    return ChannelError(f"PostgreSQL at {where} refused {doing}: {text}")
