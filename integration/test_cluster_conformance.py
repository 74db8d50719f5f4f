"""The Redis Cluster transport passes evcore's transport conformance suite against a
three-node cluster of the module's own (never the shared 6379)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _net import free_port
from _rediscluster_support import PrivateCluster

from evcore.testing import TransportConformance

pytestmark = pytest.mark.rediscluster


@pytest.fixture(scope="module")
def cluster(redis_cluster_binaries: None) -> Iterator[PrivateCluster]:
    cluster = PrivateCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


class TestRedisClusterConformance(TransportConformance):
    invalid_urls = (
        "redis+cluster://127.0.0.1:7000/3",
        "redis+cluster://127.0.0.1:7000?fanout_prefix=false",
        "redis+cluster://127.0.0.1:7000?startup_nodes=nohost",
        "redis+cluster://127.0.0.1:7000?no_such_option=1",
    )

    @pytest.fixture(autouse=True)
    def _cluster(self, cluster: PrivateCluster) -> None:
        self.transport_url = cluster.url
        self.unreachable_url = f"redis+cluster://127.0.0.1:{free_port()}?socket_connect_timeout=2"
