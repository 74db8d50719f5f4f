"""Redis transport for evcore (``redis://``, ``rediss://``, ``redis+socket://``).

Wire-compatible with kombu's Redis transport as Celery uses it for events: fanout over
pub/sub on ``/{db}.<exchange>/<routing key>`` channels, messages in kombu's JSON envelope.
Needs redis-py (``pip install 'evcore[redis]'``), imported on first use.
"""

from evcore_redis.settings import RedisSettings, parse_settings
from evcore_redis.subscription import RedisSubscription
from evcore_redis.transport import RedisTransport

__all__ = ["RedisSettings", "RedisSubscription", "RedisTransport", "parse_settings"]
