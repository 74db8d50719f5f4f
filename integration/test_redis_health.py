"""Health checks and Unix sockets, on a redis-server of the test's own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _net import wait_for
from _redis_support import FreezableProxy, PrivateRedis, private_redis

from evcore.errors import ConnectionLost
from evcore.transport import FANOUT, Exchange, IncomingMessage, OutgoingMessage, QueueOptions
from evcore_redis import RedisTransport

pytestmark = pytest.mark.redis


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


@pytest.fixture
def proxy(server: PrivateRedis) -> Iterator[FreezableProxy]:
    proxy = FreezableProxy(server.port)
    yield proxy
    proxy.close()


def test_a_silent_connection_is_given_up_by_the_health_check(
    proxy: FreezableProxy, exchange_name: str
) -> None:
    transport = RedisTransport.from_url(proxy.url(), health_check_interval=0.2, socket_timeout=0.5)
    exchange = Exchange(exchange_name, FANOUT)
    subscription = transport.subscribe(exchange, "#", QueueOptions("q"))
    transport.publish(exchange, [OutgoingMessage("before.freeze", b"{}")])
    assert [m.routing_key for m in subscription.receive(5)] == ["before.freeze"]
    assert subscription.receive(0.6) == []  # health-check PINGs answered while idle

    proxy.frozen.set()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            subscription.receive(None)
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(15)
    assert not reader.is_alive(), "receive() kept waiting on a silent connection"
    assert len(errors) == 1 and isinstance(errors[0], ConnectionLost)
    assert "health-check PING" in str(errors[0])
    with pytest.raises(ConnectionLost):
        transport.publish(exchange, [OutgoingMessage("frozen", b"{}")])
    transport.close()


def test_unix_socket_round_trip(tmp_path: Path, exchange_name: str) -> None:
    path = tmp_path / "redis.sock"
    with private_redis("--unixsocket", str(path), "--unixsocketperm", "700"):
        transport = RedisTransport.from_url(f"redis+socket://{path}?virtual_host=9")
        assert transport.settings.kind == "unix"
        exchange = Exchange(exchange_name, FANOUT)
        subscription = transport.subscribe(exchange, "#", QueueOptions("q"))
        transport.publish(exchange, [OutgoingMessage("over.unix", b"{}")])
        got: list[IncomingMessage] = []
        wait_for(lambda: bool(got.extend(subscription.receive(0.2))) or bool(got), 5)
        transport.close()
    assert [m.routing_key for m in got] == ["over.unix"]
