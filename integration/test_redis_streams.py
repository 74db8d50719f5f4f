"""The Redis Streams transport against a real Redis: the conformance suite with its durable
section, a group of monitors, and a private append-only redis-server killed mid-run."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _net import free_port, wait_for
from _redis_support import PrivateRedis, delete_prefix, streams_url

from evcore import Dispatcher, Receiver
from evcore.state import State
from evcore.state.merge import merge_snapshots
from evcore.state.snapshot import snapshot
from evcore.testing import TransportConformance
from evcore.transport import EARLIEST, StreamOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import make_events, sendable

pytestmark = [pytest.mark.redis, pytest.mark.durable]


@pytest.fixture
def stream_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"evtest-{uuid.uuid4().hex[:10]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


class TestRedisStreamsConformance(TransportConformance):
    invalid_urls = (
        "redis+streams://127.0.0.1?partitions=0",
        "redis+streams://127.0.0.1?maxlen=-3",
        "redis+streams://127.0.0.1?max_age=soon",
        "redis+streams://127.0.0.1?exact_trim=maybe",
    )
    retention_maxlen = 50
    stream_lease = 0.5

    @pytest.fixture(autouse=True)
    def _redis(self, redis_url: str, stream_prefix: str) -> None:
        self.transport_url = streams_url(redis_url, stream_prefix, partitions=3)
        self.retention_url = streams_url(
            redis_url, stream_prefix, partitions=2, maxlen=self.retention_maxlen
        )
        self.unreachable_url = f"redis+streams://127.0.0.1:{free_port()}/0"


def _workload(n_tasks: int) -> list[tuple[str, dict[str, Any]]]:
    return sendable(make_events(n_tasks, seed=5))


def _reader(url: str, **options: Any) -> tuple[State, Receiver]:
    state = State(max_tasks_in_memory=None)
    receiver = Receiver(
        url,
        handlers={"*": state.event},
        on_loss=state.record_loss,
        stream=StreamOptions(start=EARLIEST, **options),
    )
    return state, receiver


def _tasks(state_snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        task["uuid"]: {k: v for k, v in task.items() if k != "local_received"}
        for task in state_snapshot["tasks"]
    }


def test_a_group_of_two_monitors_holds_the_state_of_one(redis_url: str, stream_prefix: str) -> None:
    url = streams_url(redis_url, stream_prefix, partitions=4)
    events = _workload(300)
    with Dispatcher(url, hostname="w1@streams", buffer_group=("task",)) as dispatcher:
        for type_, fields in events:
            dispatcher.send(type_, **fields)
    single, receiver = _reader(url)
    assert receiver.capture(limit=len(events), timeout=10) == len(events)
    receiver.close()

    members = [_reader(url, group="g", member=f"m{i}", lease=1.0) for i in range(2)]
    for _ in range(100):
        handled = sum(r.capture(timeout=0.05) for _, r in members)
        if not handled and all(r.assignment() for _, r in members):
            break
    owned = [r.assignment() for _, r in members]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    union = merge_snapshots(snapshot(state) for state, _ in members)
    for _, member in members:
        assert not member.stats.lost_events
        member.close()
    assert _tasks(union) == _tasks(snapshot(single))


def test_an_append_only_redis_killed_mid_run_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    """kill -9 of a private ``redis-server --appendonly yes --appendfsync always`` while a
    dispatcher appends and a monitor reads: after the restart, the monitor has every event
    the dispatcher had handed over, once."""
    server = PrivateRedis("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    server.start()
    url = server.url.replace("redis://", "redis+streams://", 1) + "?partitions=2&prefix=ev:"
    try:
        events = _workload(150)
        state, receiver = _reader(url, group="g", member="m", lease=1.0)
        receiver.reconnect_delay = (0.05, 0.2)
        dispatcher = Dispatcher(url, hostname="w1@aof")
        half = len(events) // 2
        for type_, fields in events[:half]:
            dispatcher.send(type_, **fields)
        assert receiver.capture(limit=half, timeout=10) == half
        assert dispatcher.pending_events == 0
        process = server._process
        assert process is not None
        process.kill()
        process.wait(timeout=10)
        for type_, fields in events[half:]:
            dispatcher.send(type_, **fields)  # buffered while Redis is down
        server.start()
        assert wait_for(lambda: (dispatcher.flush(), dispatcher.pending_events == 0)[1], 10)
        handled = receiver.capture(limit=len(events) - half, timeout=15)
        assert handled == len(events) - half
        assert not receiver.stats.lost_events
        assert receiver.stats.reconnects >= 1
        assert state.event_count == len(events)
        receiver.close()
        dispatcher.close()
        # Every append Redis had confirmed is still in the streams.
        replayed, fresh = _reader(url)
        assert fresh.capture(limit=len(events), timeout=10) == len(events)
        fresh.close()
        assert _tasks(snapshot(replayed)) == _tasks(snapshot(state))
    finally:
        server.stop()
