"""PostgreSQL LISTEN/NOTIFY transport for evcore (``postgresql+notify://``).

A real broadcast for teams whose only shared service is PostgreSQL: each exchange is a
notification channel, published with ``pg_notify`` and received with ``LISTEN`` on a
connection of each subscription's own. Needs psycopg 3 (``pip install 'evcore[postgres]'``),
imported on first use.
"""

from evcore_pgnotify.payload import MAX_BODY_SIZE, MAX_PAYLOAD, channel_for
from evcore_pgnotify.settings import NotifySettings, parse_settings
from evcore_pgnotify.subscription import NotifySubscription
from evcore_pgnotify.transport import NotifyTransport

__all__ = [
    "MAX_BODY_SIZE",
    "MAX_PAYLOAD",
    "NotifySettings",
    "NotifySubscription",
    "NotifyTransport",
    "channel_for",
    "parse_settings",
]
