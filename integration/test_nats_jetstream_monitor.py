"""evcore's resumable monitors on JetStream: the Redis Streams monitor tests, run unchanged
against a ``jetstream://`` URL (a monitor killed -9 at random moments resumes with nothing
lost or doubled; a group of member processes holds the State of one)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _nats_support import jetstream_url
from test_durable_monitor import (
    test_a_group_of_member_processes_holds_the_state_of_one,
    test_a_monitor_killed_at_random_moments_resumes_with_nothing_lost_or_doubled,
)

pytestmark = [pytest.mark.nats, pytest.mark.durable]

__all__ = [
    "test_a_group_of_member_processes_holds_the_state_of_one",
    "test_a_monitor_killed_at_random_moments_resumes_with_nothing_lost_or_doubled",
]


@pytest.fixture
def stream_url(nats_url: str) -> Iterator[str]:
    with jetstream_url(nats_url, 4) as url:
        yield url
