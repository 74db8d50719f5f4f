"""The AMQP transport passes the transport conformance suite against a real RabbitMQ."""

from __future__ import annotations

import socket

import pytest

from evcore.testing import TransportConformance


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (just released by the OS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.amqp
class TestAMQPConformance(TransportConformance):
    invalid_urls = ("amqp://guest:guest@127.0.0.1:notaport//",)

    @pytest.fixture(autouse=True)
    def _broker(self, amqp_url: str) -> None:
        self.transport_url = amqp_url
        self.unreachable_url = f"amqp://guest:guest@127.0.0.1:{_closed_port()}//"
