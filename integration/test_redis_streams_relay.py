"""evcore relay between two private Redis servers: pub/sub in, Redis Streams out, each end
restarted in mid-run (the destination killed with SIGKILL), nothing lost after the relay."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from _net import wait_for
from _redis_support import PrivateRedis

from evcore import Dispatcher, Receiver
from evcore.relay import Relay
from evcore.state import State
from evcore.transport import EARLIEST, StreamOptions

pytestmark = pytest.mark.redis


def test_the_relay_survives_both_ends_restarting(tmp_path: Path) -> None:
    source = PrivateRedis()
    destination = PrivateRedis(
        "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)
    )
    source.start()
    destination.start()
    stream_url = destination.url.replace("redis://", "redis+streams://", 1) + "?partitions=2"
    relay = Relay(source.url, stream_url)
    relay.receiver.reconnect_delay = (0.05, 0.2)
    runner = threading.Thread(target=relay.run, kwargs={"duration": 60})
    worker = Dispatcher(source.url, hostname="celery@w1")
    try:
        runner.start()

        def send(first: int, count: int) -> None:
            for n in range(first, first + count):
                worker.send("task-received", uuid=f"task-{n}", name="add")
            worker.flush()

        send(0, 50)
        assert wait_for(lambda: relay.stats.forwarded == 50, 10)

        source.stop()  # the source goes away and comes back: the relay subscribes again
        source.start()
        assert wait_for(lambda: relay.stats.source_reconnects >= 1, 10)
        send(50, 50)
        assert wait_for(lambda: relay.stats.forwarded == 100, 10)

        process = destination._process
        assert process is not None
        process.kill()  # SIGKILL: the relay keeps what it cannot append
        process.wait(timeout=10)
        send(100, 50)
        assert wait_for(lambda: relay.stats.received == 150, 10)
        destination.start()
        assert wait_for(lambda: relay.stats.forwarded == 150 and relay.stats.pending == 0, 20)
    finally:
        relay.stop()
        runner.join(timeout=30)
        relay.close()
        worker.close()
    stats = relay.stats
    assert (stats.received, stats.forwarded, stats.unparseable, stats.dropped) == (150, 150, 0, 0)
    state = State()
    monitor = Receiver(
        stream_url, handlers={"*": state.event}, stream=StreamOptions(start=EARLIEST)
    )
    try:
        assert monitor.capture(limit=150, timeout=10) == 150
        assert monitor.capture(timeout=0.5) == 0
    finally:
        monitor.close()
        source.stop()
        destination.stop()
    assert sorted(state.tasks) == sorted(f"task-{n}" for n in range(150))
    assert not monitor.stats.lost_events
