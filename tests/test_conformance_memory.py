"""The in-memory transport passes the transport conformance suite."""

from __future__ import annotations

from evcore.testing import TransportConformance


class TestMemoryConformance(TransportConformance):
    transport_url = "memory://conformance"
