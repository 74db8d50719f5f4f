"""The in-memory transport passes the transport conformance suite."""

from __future__ import annotations

from evcore.testing import TransportConformance


class TestMemoryConformance(TransportConformance):
    transport_url = "memory://conformance"


class TestMemoryStreamConformance(TransportConformance):
    """The durable in-memory transport: the basics through its pub/sub side, and the
    durable section."""

    transport_url = "memory+stream://conformance?partitions=3"
    retention_url = "memory+stream://conformance-retention?partitions=2&maxlen=50"
    retention_maxlen = 50
    stream_lease = 0.3
    invalid_urls = (
        "memory+stream://x?partitions=0",
        "memory+stream://x?unknown=1",
        "memory+stream://x?maxlen=many",
    )
