"""Accept a transport or a URL wherever a transport is wanted."""

from __future__ import annotations

from evcore.registry import connect
from evcore.transport import Transport


def resolve_transport(transport_or_url: Transport | str) -> tuple[Transport, bool]:
    """Return the transport, and whether the caller owns it (True when built from a URL)."""
    if isinstance(transport_or_url, str):
        return connect(transport_or_url), True
    return transport_or_url, False
