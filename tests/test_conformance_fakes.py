"""The test transports of tests/_fake_transports.py pass the conformance suite, so the
core's tests that use them run on transports that keep the contract."""

from __future__ import annotations

from evcore.testing import TransportConformance


class TestFakeSQLConformance(TransportConformance):
    transport_url = "fakesql://conformance"
    invalid_urls = ("memory://conformance",)


class TestFakeRedisConformance(TransportConformance):
    transport_url = "fakeredis://conformance"
    invalid_urls = ("fakesql://conformance",)
