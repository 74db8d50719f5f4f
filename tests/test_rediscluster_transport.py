"""The Redis Cluster transport without a cluster: URLs, startup nodes and channels."""

from __future__ import annotations

import sys

import pytest

from evcore.errors import InvalidURL, MissingDependency
from evcore.registry import connect
from evcore_rediscluster import ClusterTransport, parse_cluster_settings
from evcore_rediscluster.subscription import _moved_to


def test_url_startup_nodes_and_connection_options() -> None:
    settings = parse_cluster_settings(
        "rediss+cluster://app:s%40cret@10.0.0.1:7000?startup_nodes=10.0.0.2:7001,10.0.0.3:7002"
        "&socket_timeout=2&ssl_cert_reqs=none&channel_prefix=ev:"
    )
    assert settings.startup_nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002))
    assert settings.node.kind == "tls" and settings.node.password == "s@cret"
    assert settings.node.socket_timeout == 2.0
    assert settings.channel("celeryev") == "ev:celeryev"
    assert parse_cluster_settings("redis+cluster://h:7000").channel("x") == "evcore.x"


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:7000",
        "redis+cluster://h:7000/2",
        "redis+cluster://h:7000?global_keyprefix=x",
        "redis+cluster://h:7000?startup_nodes=h2",
        "redis+cluster://h:7000?startup_nodes=h2:99999",
        "redis+cluster://h:7000?socket_timeout=soon",
        "redis+cluster://[h",
    ],
)
def test_unusable_urls_are_invalid(url: str) -> None:
    with pytest.raises(InvalidURL):
        ClusterTransport.from_url(url)


def test_the_scheme_is_registered_and_opens_without_io() -> None:
    transport = connect("redis+cluster://127.0.0.1:1")
    assert isinstance(transport, ClusterTransport)
    assert transport.driver_type == "redis-cluster"
    transport.close()


def test_missing_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependency, match=r"pip install 'evcore\[redis-cluster\]'"):
        ClusterTransport.from_url("redis+cluster://h:7000")


def test_moved_answers_name_the_node_to_follow() -> None:
    assert _moved_to(ValueError("MOVED 3999 10.0.0.2:7001")) == ("10.0.0.2", 7001)
    assert _moved_to(ValueError("ERR unknown command")) is None
