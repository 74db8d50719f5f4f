"""The NATS core transport passes evcore's transport conformance suite against a real server."""

from __future__ import annotations

import pytest
from _net import free_port

from evcore.testing import TransportConformance

pytestmark = pytest.mark.nats


class TestNatsConformance(TransportConformance):
    invalid_urls = (
        "nats://127.0.0.1/a/path",
        "nats://127.0.0.1?connect_timeout=soon",
        "nats://127.0.0.1?no_such_option=1",
        "nats://127.0.0.1:99999",
        "nats://127.0.0.1?subject_prefix=a.*",
    )
    # The server's default max_payload is 1 MiB and counts the header block too, so a
    # 1 MiB body cannot travel; a body just under it does (the limit is tested apart).
    large_payload_size = (1 << 20) - 4096

    @pytest.fixture(autouse=True)
    def _nats(self, nats_url: str) -> None:
        self.transport_url = nats_url
        self.unreachable_url = f"nats://127.0.0.1:{free_port()}?connect_timeout=1"
