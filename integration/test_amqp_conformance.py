"""The transport conformance suite, run against the AMQP transport and a real RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _amqp_support import RecordingTransport, delete_exchanges

from evcore.testing import TransportConformance
from evcore.transport import Transport

pytestmark = pytest.mark.amqp


class TestAMQPConformance(TransportConformance):
    unreachable_url = "amqp://guest:guest@127.0.0.1:1//?socket_timeout=2"
    invalid_urls = ("amqp://127.0.0.1:notaport//", "amqp://127.0.0.1//?no_such_option=1")

    @pytest.fixture(autouse=True)
    def _amqp_broker(self, amqp_url: str) -> Iterator[None]:
        self.transport_url = amqp_url
        RecordingTransport.declared = set()
        yield
        delete_exchanges(amqp_url, RecordingTransport.declared)

    def make_transport(self) -> Transport:
        assert self.transport_url is not None
        return RecordingTransport.from_url(self.transport_url)
