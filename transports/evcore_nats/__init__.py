"""NATS transports for evcore: core pub/sub (``nats://``) and JetStream (``jetstream://``).

Subjects are mapped from the exchange and the routing key so that NATS's wildcards do the
topic matching (see :mod:`evcore_nats.subjects`); JetStream keeps them in one stream per
exchange, partitioned, read by consumer groups (see :mod:`evcore_nats.jetstream`). nats-py
is asyncio-only: each transport runs it on a private event loop in a thread of its own.
Needs nats-py (``pip install 'evcore[nats]'``), imported on first use.
"""

from evcore_nats.core import NatsStats, NatsSubscription, NatsTransport
from evcore_nats.jetstream import JetStreamSubscription, JetStreamTransport
from evcore_nats.settings import NatsSettings, parse_settings

__all__ = [
    "JetStreamSubscription",
    "JetStreamTransport",
    "NatsSettings",
    "NatsStats",
    "NatsSubscription",
    "NatsTransport",
    "parse_settings",
]
