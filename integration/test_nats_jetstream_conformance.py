"""The JetStream transport passes evcore's conformance suite, durable section included,
against a real server. Its streams carry a prefix of this run's own and are deleted after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from _nats_support import delete_streams
from _net import free_port

from evcore.testing import TransportConformance

pytestmark = [pytest.mark.nats, pytest.mark.durable]

PREFIX = f"evtest{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def jetstream_url(nats_url: str) -> Iterator[str]:
    url = nats_url.replace("nats://", "jetstream://", 1)
    yield f"{url}?partitions=4&stream_prefix={PREFIX}&storage=memory"
    delete_streams(nats_url, PREFIX)


class TestJetStreamConformance(TransportConformance):
    invalid_urls = (
        "jetstream://127.0.0.1?partitions=0",
        "jetstream://127.0.0.1?storage=tape",
        "jetstream://127.0.0.1?stream_prefix=a.b",
        "jetstream://127.0.0.1?max_age=-1",
        "jetstream://127.0.0.1/path",
    )
    large_payload_size = (1 << 20) - 4096
    # A reader pulls at most `batch` messages per partition ahead of what it handed out;
    # retention removes what is behind that.
    retention_maxlen = 50

    @pytest.fixture(autouse=True)
    def _jetstream(self, jetstream_url: str) -> None:
        self.transport_url = jetstream_url
        self.retention_url = f"{jetstream_url}&max_msgs=50&batch=10"
        self.unreachable_url = f"jetstream://127.0.0.1:{free_port()}?connect_timeout=1"
