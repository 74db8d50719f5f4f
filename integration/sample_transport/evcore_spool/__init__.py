"""evcore-spool: a sample third-party evcore transport over a spool directory.

Processes on one machine exchange events through files (``spool:///path/to/dir``); no
broker is needed. It exists to show, end to end, how a transport is written, registered
and checked: see ``docs/writing-a-transport.md`` in evcore.
"""

from evcore_spool.transport import SpoolSubscription, SpoolTransport

__all__ = ["SpoolSubscription", "SpoolTransport"]
