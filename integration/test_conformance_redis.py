"""The Redis transport passes the transport conformance suite against a real Redis."""

from __future__ import annotations

import socket

import pytest

from evcore.testing import TransportConformance


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (just released by the OS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.redis
class TestRedisConformance(TransportConformance):
    invalid_urls = ("redis://127.0.0.1:notaport/0", "redis://127.0.0.1:6379/notadb")

    @pytest.fixture(autouse=True)
    def _broker(self, redis_url: str) -> None:
        self.transport_url = redis_url
        self.unreachable_url = f"redis://127.0.0.1:{_closed_port()}/0"
