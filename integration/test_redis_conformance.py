"""The Redis transport passes evcore's transport conformance suite against a real Redis."""

from __future__ import annotations

import pytest
from _net import free_port
from _redis_support import with_db

from evcore.testing import TransportConformance

pytestmark = pytest.mark.redis


class TestRedisConformance(TransportConformance):
    invalid_urls = (
        "redis://127.0.0.1/not-a-db",
        "redis://127.0.0.1?socket_timeout=soon",
        "redis://127.0.0.1?no_such_option=1",
        "redis+socket://",
    )

    @pytest.fixture(autouse=True)
    def _redis(self, redis_url: str) -> None:
        self.transport_url = with_db(redis_url)
        self.unreachable_url = f"redis://127.0.0.1:{free_port()}/0"
