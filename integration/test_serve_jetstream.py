"""``evcore serve`` on JetStream: the Redis Streams test, run unchanged against a
``jetstream://`` URL (SIGKILLed and restarted on its state file, every Celery-style event
applied exactly once)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _nats_support import jetstream_url
from test_serve_redis_streams import (
    PARTITIONS,
    test_serve_killed_and_restarted_applies_every_event_once,
)

pytestmark = [pytest.mark.nats, pytest.mark.durable]

__all__ = ["test_serve_killed_and_restarted_applies_every_event_once"]


@pytest.fixture
def stream_url(nats_url: str) -> Iterator[str]:
    with jetstream_url(nats_url, PARTITIONS) as url:
        yield url
