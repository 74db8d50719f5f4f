"""The kombu bridge passes the transport conformance suite over real Redis and RabbitMQ."""

from __future__ import annotations

import socket

import pytest

from evcore.testing import TransportConformance

pytestmark = pytest.mark.kombu


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (just released by the OS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.redis
class TestKombuRedisConformance(TransportConformance):
    invalid_urls = ("kombu+", "kombu+redis", "kombu+nosuchkombutransport://127.0.0.1/")

    @pytest.fixture(autouse=True)
    def _broker(self, redis_url: str) -> None:
        self.transport_url = f"kombu+{redis_url}"
        self.unreachable_url = f"kombu+redis://127.0.0.1:{_closed_port()}/0"


@pytest.mark.amqp
class TestKombuAMQPConformance(TransportConformance):
    invalid_urls = ("kombu+amqp", "kombu+amqp://guest:guest@127.0.0.1:notaport//")

    @pytest.fixture(autouse=True)
    def _broker(self, amqp_url: str) -> None:
        self.transport_url = f"kombu+{amqp_url}"
        self.unreachable_url = f"kombu+amqp://guest:guest@127.0.0.1:{_closed_port()}//"
