"""Authentication and ACLs, on a redis-server of the test's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from _net import wait_for
from _redis_support import PrivateRedis, private_redis

from evcore.errors import ChannelError
from evcore.transport import FANOUT, Exchange, IncomingMessage, OutgoingMessage, QueueOptions
from evcore_redis import RedisTransport

pytestmark = pytest.mark.redis

QUEUE = QueueOptions("q")


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    with private_redis("--requirepass", "s3cret") as server:
        yield server


def round_trip(transport: RedisTransport, exchange: Exchange) -> list[IncomingMessage]:
    subscription = transport.subscribe(exchange, "#", QUEUE)
    transport.publish(exchange, [OutgoingMessage("worker.online", b"{}")])
    got: list[IncomingMessage] = []
    wait_for(lambda: bool(got.extend(subscription.receive(0.2))) or bool(got), 5)
    return got


def test_missing_password_is_a_channel_error(server: PrivateRedis, exchange_name: str) -> None:
    exchange = Exchange(exchange_name, FANOUT)
    transport = RedisTransport.from_url(server.url)
    with pytest.raises(ChannelError, match=r"NOAUTH|[Aa]uthentication"):
        transport.publish(exchange, [OutgoingMessage("a", b"{}")])
    with pytest.raises(ChannelError):
        transport.subscribe(exchange, "#", QUEUE)
    transport.close()

    authenticated = RedisTransport.from_url(server.url.replace("//", "//:s3cret@", 1))
    assert [m.routing_key for m in round_trip(authenticated, exchange)] == ["worker.online"]
    authenticated.close()


def test_acl_granting_kombus_channels_is_enough(server: PrivateRedis, exchange_name: str) -> None:
    """A user allowed exactly what a Celery monitor needs can run evcore: the PSUBSCRIBE
    pattern is compared literally by Redis, and evcore's is kombu's."""
    url_user = server.url.replace("//", "//monitor:pw@", 1)
    url_stranger = server.url.replace("//", "//stranger:pw@", 1)
    client = redis.Redis.from_url(server.url, password="s3cret", protocol=2)
    client.acl_setuser(
        "monitor",
        enabled=True,
        passwords=["+pw"],
        commands=["+publish", "+psubscribe", "+punsubscribe", "+ping", "+select", "+client"],
        channels=[f"/9.{exchange_name}/*"],
        reset_channels=True,
    )
    client.acl_setuser(
        "stranger",
        enabled=True,
        passwords=["+pw"],
        commands=["+publish", "+psubscribe", "+ping", "+select", "+client"],
        channels=["/9.someone-else/*"],
        reset_channels=True,
    )
    client.close()
    exchange = Exchange(exchange_name, FANOUT)

    monitor = RedisTransport.from_url(url_user, client_name="evcore-acl")
    assert [m.routing_key for m in round_trip(monitor, exchange)] == ["worker.online"]
    monitor.close()

    stranger = RedisTransport.from_url(url_stranger)
    with pytest.raises(ChannelError, match=r"NOPERM|permission"):
        stranger.subscribe(exchange, "#", QUEUE)
    with pytest.raises(ChannelError, match=r"NOPERM|permission"):
        stranger.publish(exchange, [OutgoingMessage("a", b"{}")])
    stranger.close()
