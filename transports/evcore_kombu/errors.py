"""Turn what kombu and its client libraries raise into :mod:`evcore.errors`."""

from __future__ import annotations

from typing import Any

from evcore.errors import ChannelError, ConnectionLost, EvcoreError, MissingDependency

__all__ = ["import_kombu", "translate"]

INSTALL_HINT = "pip install 'evcore[kombu]'"


def import_kombu() -> Any:
    """Import kombu, or raise MissingDependency saying how to install it."""
    try:
        import kombu  # noqa: PLC0415 - optional dependency, imported on first use
        import kombu.exceptions  # noqa: PLC0415
        import kombu.transport.virtual  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependency(
            f"the kombu bridge transport needs kombu, which is not installed: {INSTALL_HINT}"
        ) from exc
    return kombu


def translate(exc: Exception, connection: Any, doing: str) -> EvcoreError:
    """The evcore error for ``exc``, raised by ``connection`` while ``doing`` something.

    kombu lists each transport's failures in ``connection_errors`` (the broker is away: a
    reconnect may cure it) and ``channel_errors`` (the broker refused). Anything else
    kombu raises is taken as a refusal too, so it surfaces instead of being retried.
    """
    if isinstance(exc, EvcoreError):
        return exc
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    lost = (*connection.connection_errors, OSError, import_kombu().exceptions.OperationalError)
    if isinstance(exc, lost):
        return ConnectionLost(f"kombu connection lost while {doing} ({detail})")
    if isinstance(exc, connection.channel_errors):
        return ChannelError(f"broker refused {doing} ({detail})")
    return ChannelError(f"kombu failed {doing} ({detail})")
