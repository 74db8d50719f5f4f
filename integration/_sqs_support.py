"""SQS helpers of the integration tests: transport URLs for the suite's moto server."""

from __future__ import annotations

import uuid


def sqs_url(endpoint: str, **options: str) -> str:
    """An ``sqs://`` URL for ``endpoint`` with moto's test credentials, a region and queue
    and topic prefixes of the test's own (so a sweep never sees another test's queues)."""
    query = {
        "region": "us-east-1",
        "endpoint_url": endpoint,
        "wait_time_seconds": "1",
        **options,
    }
    return "sqs://testing:testing@?" + "&".join(f"{k}={v}" for k, v in query.items())


def own_prefix() -> str:
    """A queue prefix no other test uses."""
    return f"evt{uuid.uuid4().hex[:10]}-"
