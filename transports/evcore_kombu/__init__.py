"""The kombu bridge transport: evcore events over any broker kombu supports.

URLs are ``kombu+<kombu url>``: ``kombu+redis://127.0.0.1:6379/0``,
``kombu+sqla+sqlite:////tmp/x.db``, ``kombu+memory://``. kombu itself is imported only
when a transport is opened (``pip install 'evcore[kombu]'``). See
``docs/transports/kombu.md``.
"""

from evcore_kombu.support import KombuSupport
from evcore_kombu.transport import KombuSubscription, KombuTransport

__all__ = ["KombuSubscription", "KombuSupport", "KombuTransport"]
