"""Redis Cluster transport for evcore (``redis+cluster://``, ``rediss+cluster://``).

Sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7): each exchange's channel lives on the shard
owning its hash slot, and subscriptions follow the slot when it moves. Needs redis-py
(``pip install 'evcore[redis-cluster]'``), imported on first use.
"""

from evcore_rediscluster.settings import ClusterSettings, parse_cluster_settings
from evcore_rediscluster.subscription import ClusterSubscription
from evcore_rediscluster.transport import ClusterTransport

__all__ = ["ClusterSettings", "ClusterSubscription", "ClusterTransport", "parse_cluster_settings"]
