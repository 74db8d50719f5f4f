"""Redis Streams transport for evcore (``redis+streams://``, ``rediss+streams://``).

The durable side of evcore's Transport protocol on Redis: events appended to P partition
streams (task events by task uuid, worker events to every partition), retention by length
and age, consumer groups whose members own partitions through leases kept in Redis, and
positions acknowledged per group. Needs redis-py (``pip install 'evcore[redis]'``).
See ``docs/transports/redis-streams.md``.
"""

from evcore_redis_streams.layout import StreamSettings, parse_stream_url
from evcore_redis_streams.subscription import RedisStreamSubscription
from evcore_redis_streams.transport import RedisStreamsTransport

__all__ = [
    "RedisStreamSubscription",
    "RedisStreamsTransport",
    "StreamSettings",
    "parse_stream_url",
]
